"""The default path works with the network cut off; Hub ids fail fast."""

import subprocess
import sys
import textwrap
import time

# Any attempt to open a network connection raises, in a fresh interpreter.
NO_NETWORK = textwrap.dedent("""
    import socket
    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")
    socket.socket.connect = refuse
    socket.create_connection = refuse
""")


def run_offline(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env_free = {"PATH": "/usr/bin:/bin", "PEFT_TEACH_PROGRESS": "0", "HOME": "/tmp"}
    return subprocess.run([sys.executable, "-c", NO_NETWORK + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env_free)


def test_default_model_and_suite_without_network():
    result = run_offline("""
        import torch
        from peft_teach.models import build_classifier, load_tokenizer
        from peft_teach.data import load_suite
        suite = load_suite()
        tokenizer = load_tokenizer()
        model = build_classifier(2).eval()
        batch = tokenizer(list(suite["sentiment"]["test"]["text"][:4]), padding=True, return_tensors="pt")
        with torch.no_grad():
            print("logits", tuple(model(**batch).shape), "tasks", len(suite))
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "logits (4, 2) tasks 6" in result.stdout


def test_hub_model_fails_fast_with_a_clear_message():
    start = time.perf_counter()
    result = run_offline("""
        from peft_teach.models import load_base_model
        load_base_model("prajjwal1/bert-tiny")
    """)
    assert result.returncode != 0
    assert "HubUnavailableError" in result.stderr and "local folder" in result.stderr
    assert time.perf_counter() - start < 60
