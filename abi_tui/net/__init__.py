"""What every HTTP client in abi shares: server-sent events both ways (`sse`) and the streaming
HTTP layer (`http_client`). No Textual, and `sse` imports no aiohttp (the dashboard paints its
first frame before it needs the network)."""
