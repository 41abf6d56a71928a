import pytest

from edgeinfer.cli import main


def test_unreachable_registry_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet", "status", "--registry", "etcd://127.0.0.1:9/x?ttl=3"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edgeinfer fleet: error: ") and "unreachable" in err


@pytest.mark.parametrize(
    "args, words",
    [
        (["set", "m", "2", "--group", "g", "--canary", "3"], "--canary and --weight go together"),
        (["set", "m", "2", "--group", "g", "--artifact", "/no/such.onnx"], "no such file"),
        (["set", "m", "2", "--group", "g", "--adapter", "bot"], "NAME=TENANT"),
        (["status", "--registry", "http://127.0.0.1:9"], "etcd://"),
    ],
)
def test_bad_arguments_are_explained(
    args: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if "--registry" not in args:
        args = [*args, "--registry", "etcd://127.0.0.1:9/x"]
    assert main(["fleet", *args]) == 1
    assert words in capsys.readouterr().err
