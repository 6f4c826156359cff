"""config.toml's `[endpoints.NAME]` tables are parsed with the rest of the file (a bad one is a
configuration error naming file, line and key), and save_setting keeps the file as written."""

from __future__ import annotations

import pytest

from abi_tui.config import ConfigError, load_settings, save_setting


def load(abi_home, text: str):
    path = abi_home / "config.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(env={"ABI_HOME": str(abi_home)}), path


def test_endpoint_tables_become_checked_settings(abi_home):
    settings, _ = load(abi_home, '[server]\nport = 9000\n\n[endpoints.vllm]\nurl = "http://gpu:8000/v1"\n'
                                 'first_token_timeout_s = 120\nmax_concurrency = 2\n\n'
                                 '[endpoints.ollama]\nretries = 0\n')
    vllm = settings.endpoints["vllm"]
    assert (vllm.url, vllm.kind, vllm.max_concurrency) == ("http://gpu:8000/v1", None, 2)
    assert vllm.first_token_timeout_s == 120.0 and isinstance(vllm.first_token_timeout_s, float)
    assert vllm.policy_values() == {"first_token_timeout_s": 120.0}
    assert settings.endpoints["ollama"].policy_values() == {"retries": 0}  # a built-in, tuned


@pytest.mark.parametrize("table,line,key,needle", [
    ('[endpoints.box]\nkind = "ollama"\n', 2, "endpoints.box", "url is missing"),
    ('[endpoints.box]\nurl = "http://x"\ntimeout = 3\n', 4, "endpoints.box.timeout", "unknown key"),
    ('[endpoints.box]\nurl = "ftp://x"\n', 3, "endpoints.box.url", "http://"),
    ('[endpoints.box]\nurl = "http://x"\nkind = "grpc"\n', 4, "endpoints.box.kind", "openai, ollama, anthropic"),
    ('[endpoints.box]\nurl = "http://x"\nretries = -1\n', 4, "endpoints.box.retries", ">= 0"),
    ('[endpoints.box]\nurl = "http://x"\nmax_concurrency = 0\n', 4, "endpoints.box.max_concurrency", ">= 1"),
    ('[endpoints.box]\nurl = "http://x"\nlist_models = "yes please"\n', 4, "endpoints.box.list_models", "bool"),
    ('[endpoints.box]\nurl = "http://x"\nretries = 1.5\n', 4, "endpoints.box.retries", "expected int"),
    ('[endpoints.mock]\nurl = "http://x"\n', 2, "endpoints.mock", "taken"),
    ('[endpoints.ollama]\nkind = "openai"\n', 3, "endpoints.ollama.kind", "built-in"),
])
def test_a_bad_endpoint_is_a_config_error_with_file_line_and_key(abi_home, table, line, key, needle):
    with pytest.raises(ConfigError) as caught:
        load(abi_home, "# my endpoints\n" + table)
    message = str(caught.value)
    assert message.startswith(f"{abi_home / 'config.toml'}: line {line}, key {key}: ")
    assert needle in message


def test_save_setting_keeps_comments_and_layout(abi_home):
    original = ('# my settings\n[server]\nport = 9000  # the port my proxy expects\n\n'
                '[ui]\n# light in the day\ntheme = "abi-dark"\n\n[endpoints.vllm]\nurl = "http://gpu:8000/v1"\n')
    settings, path = load(abi_home, original)
    save_setting(settings, "ui.theme", "abi-light")
    save_setting(settings, "models.last_used", "tiny")  # a section the file does not have yet
    text = path.read_text()
    assert text.startswith(original.replace('theme = "abi-dark"', 'theme = "abi-light"'))
    assert "# the port my proxy expects" in text and "# light in the day" in text
    assert '[models]\nlast_used = "tiny"' in text
    reloaded = load_settings(env={"ABI_HOME": str(abi_home)})
    assert reloaded.ui.theme == "abi-light" and reloaded.models.last_used == "tiny"
    assert reloaded.endpoints["vllm"].url == "http://gpu:8000/v1"
