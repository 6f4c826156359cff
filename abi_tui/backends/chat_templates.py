"""Chat templates: the GGUF's own, or a known format chosen by architecture when it has none.

The fallbacks are Jinja like the GGUF ones, so both render through the same formatter. Unlike
llama-cpp-python's built-in `gemma` format, ours keeps the system prompt (Gemma's official
template folds it into the first user turn), because personas depend on it.
"""

from __future__ import annotations

from collections.abc import Callable

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

GEMMA = (
    "{{ bos_token }}{% set system = namespace(text='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% set system.text = system.text + m['content'] + '\n\n' %}"
    "{% else %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{% if m['role'] == 'user' and system.text %}{{ system.text }}{% set system.text = '' %}{% endif %}"
    "{{ m['content'] }}<end_of_turn>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

LLAMA2 = (
    "{% set system = namespace(text='') %}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set system.text = '<<SYS>>\n' + m['content'] + '\n<</SYS>>\n\n' %}"
    "{% elif m['role'] == 'user' %}{{ bos_token }}[INST] {{ system.text }}{{ m['content'] }} [/INST]{% set system.text = '' %}"
    "{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}"
)

MISTRAL = (
    "{{ bos_token }}{% set system = namespace(text='') %}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set system.text = m['content'] + '\n\n' %}"
    "{% elif m['role'] == 'user' %}[INST] {{ system.text }}{{ m['content'] }} [/INST]{% set system.text = '' %}"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)

PHI3 = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

TEMPLATES = {"chatml": CHATML, "gemma": GEMMA, "llama3": LLAMA3, "llama2": LLAMA2,
             "mistral": MISTRAL, "phi3": PHI3}
# Text that ends a turn in each format, used as stop strings besides the model's EOG tokens.
TURN_ENDS = {"chatml": ["<|im_end|>"], "gemma": ["<end_of_turn>"], "llama3": ["<|eot_id|>"],
             "llama2": [], "mistral": [], "phi3": ["<|end|>"]}


def fallback_format(architecture: str, has_token: Callable[[str], bool]) -> str:
    """Pick a known format for a GGUF without a chat template."""
    arch = architecture.lower()
    if arch.startswith("gemma"):
        return "gemma"
    if arch.startswith("phi3") or (has_token("<|end|>") and has_token("<|assistant|>")):
        return "phi3"
    if has_token("<|start_header_id|>"):
        return "llama3"
    if has_token("<|im_start|>") or arch.startswith(("qwen", "chatglm", "internlm", "deepseek")):
        return "chatml"
    if arch in ("mistral", "mixtral") or has_token("[INST]"):
        return "mistral"
    if arch == "llama":
        return "llama2"
    return "chatml"
