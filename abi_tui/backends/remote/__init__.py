"""Remote inference backends: OpenAI-compatible servers, Ollama and Anthropic behind model ids
`<endpoint>/<model>`.

A remote request always streams from its provider, whatever our client asked for, so the
timeouts mean the same thing everywhere: connect 10 s, first token 60 s, between tokens 30 s
(only tokens, reasoning included, move these deadlines: keep-alives and pings do not).

Retries happen only before the first token reached our client, with exponential backoff and
jitter (`abi_tui.backoff`): connection failures, 5xx, 408, a stream that broke early. Not
retried: 4xx, 429 (the client gets the provider's Retry-After), and a first-token timeout (the
provider took the request and went silent; asking again doubles the wait and the load). A
kept-alive connection the provider had closed is sent again once by the HTTP layer
(`abi_tui.net.http_client`), before any of this.

A circuit breaker per endpoint counts consecutive failed attempts that say the provider is
unwell (transport errors, timeouts, 5xx; not 4xx, 429, a rejected key or our client leaving):
5 open it for 30 s, during which requests get 503 circuit_open with Retry-After at once; then
one probe request goes through, and its first token closes the breaker.

Endpoints come from the environment and the `[endpoints.NAME]` tables of config.toml, which
`abi_tui.config` parses and checks with the rest of the file (a bad table stops the start
with the file, line and key):
  openai/<model>     OPENAI_BASE_URL (default the public API), OPENAI_API_KEY
  ollama/<model>     OLLAMA_HOST (default http://127.0.0.1:11434)
  anthropic/<model>  ANTHROPIC_BASE_URL (default the public API), ANTHROPIC_API_KEY
  NAME/<model>       [endpoints.NAME] url = "http://host:8080/v1", api_key_env = "VAR",
                     kind = "openai" (default) | "ollama" | "anthropic"

One module per concern, each importing only those before it in this list:
  errors.py     provider errors as AbiErrors (the status mapping)
  policy.py     RemotePolicy: timeouts, retries, breaker settings of an endpoint
  breaker.py    CircuitBreaker
  endpoints.py  Endpoint, and the endpoints of a Settings (built-ins, environment, tables)
  backend.py    RemoteBackend: the stream, its deadlines, retries and breaker bookkeeping
  openai_compat.py, ollama.py, anthropic.py   the three protocols
  registry.py   RemoteRegistry: one backend per model id, one HTTP layer for all
  listing.py    what each endpoint serves, for /v1/models
"""
