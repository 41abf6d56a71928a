from pathlib import Path

import pytest

from edgeinfer.config import ConfigError, LlmOptions, ModelConfig, ServerSettings, VersionPolicy


def test_defaults_from_empty_config(tmp_path: Path) -> None:
    cfg = ModelConfig.from_toml(tmp_path / "missing.toml", "m")
    assert cfg.backend == ""  # the version's model file decides
    assert cfg.version_policy.select([1, 2, 3]) == [3]
    assert cfg.onnxruntime.allow_spinning is False


@pytest.mark.parametrize(("raw", "available", "expected"), [
    ({"latest": 2}, [1, 5, 3], [3, 5]),
    ({"specific": [1, 3, 9]}, [1, 2, 3], [1, 3]),
    ({"all": True}, [2, 1], [1, 2]),
])  # fmt: skip
def test_version_policies(raw: dict, available: list[int], expected: list[int]) -> None:
    assert VersionPolicy.from_dict(raw, "t").select(available) == expected


@pytest.mark.parametrize(("text", "needle"), [
    ("max_batch_size = -1", "max_batch_size"),
    ("[openvino]\nhint = 'fast'", "openvino.hint"),
    ("[litert]\nintra_op_threads = -1", "litert.intra_op_threads"),
    ("colour = 'red'", "unknown keys"),
    ("[version_policy]\nlatest = 0", "latest"),
    ("[version_policy]\nlatest = 1\nall = true", "exactly one"),
    ("[version_policy]\nspecific = []", "specific"),
    ("[onnxruntime]\nexecution_mode = 'fast'", "execution_mode"),
    ("[onnxruntime]\nthreads = 2", "threads"),
    ("name = 'other'", "directory name"),
    ("max_batch_size = ", "not valid TOML"),
    ("[text]\nmax_strings = 0", "max_strings"),
    ("[text]\nmax_bytes = -1", "max_bytes"),
])  # fmt: skip
def test_bad_configs_say_what_to_fix(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        ModelConfig.from_toml(path, "m")


def test_server_settings_validation() -> None:
    with pytest.raises(ConfigError, match="http-port"):
        ServerSettings(http_port=70000)
    with pytest.raises(ConfigError, match="model-control"):
        ServerSettings(model_control="poll-everything")


def test_env_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEINFER_HTTP_PORT", "9123")
    assert ServerSettings.env_defaults()["http_port"] == "9123"


def test_overrides_parse_and_merge(tmp_path: Path) -> None:
    from edgeinfer.config import parse_overrides

    ov = parse_overrides(["m.max_batch_size=16", "m.dynamic_batching.preferred_batch_sizes=[4, 8]",
                          "m.queue.timeout_action=delay", "m.queue.max_queue_size=10"])  # fmt: skip
    path = tmp_path / "config.toml"
    path.write_text("max_batch_size = 4\n[queue]\nmax_queue_size = 5\npriority_levels = 2\n")
    cfg = ModelConfig.from_toml(path, "m", ov["m"])
    assert cfg.max_batch_size == 16
    assert cfg.dynamic_batching is not None
    assert cfg.dynamic_batching.preferred_batch_sizes == (4, 8)
    assert (cfg.queue.max_queue_size, cfg.queue.priority_levels) == (10, 2)
    assert cfg.queue.timeout_action == "delay"
    with pytest.raises(ConfigError, match=r"MODEL\.KEY=VALUE"):
        parse_overrides(["max_batch_size=3"])
    with pytest.raises(ConfigError, match="with --set overrides"):
        ModelConfig.from_toml(path, "m", parse_overrides(["m.queue.timeout_action=explode"])["m"])


def test_llm_lora_scheduling_options_are_read_and_checked() -> None:
    config = ModelConfig.from_dict(
        {"backend": "llama.cpp", "llm": {"max_loras": 2, "max_lora_wait": 0.5,
                                         "lora_steps_per_switch": 4}}, "m"
    )  # fmt: skip
    assert (config.llm.max_loras, config.llm.max_lora_wait) == (2, 0.5)
    assert config.llm.lora_steps_per_switch == 4
    for bad in ({"max_loras": -1}, {"max_lora_wait": -1.0}, {"lora_steps_per_switch": 0}):
        with pytest.raises(ConfigError, match="llm\\."):
            ModelConfig.from_dict({"backend": "llama.cpp", "llm": bad}, "m")


def test_flash_attention_is_on_by_default_except_with_an_exact_f32_cache() -> None:
    def llm(**kw: object) -> LlmOptions:
        return ModelConfig.from_dict({"backend": "llama.cpp", "llm": kw}, "m").llm

    assert llm().flash
    assert llm(kv_cache_type="q8_0").flash
    assert not llm(kv_cache_type="f32").flash
    assert llm(kv_cache_type="f32", flash_attn=True).flash
    assert not llm(flash_attn=False).flash
    with pytest.raises(ConfigError, match='flash_attn to "auto" or true'):
        llm(kv_cache_type="q8_0", flash_attn=False)
    with pytest.raises(ConfigError, match='must be "auto", true or false'):
        llm(flash_attn="yes")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"forwarded_allow_ips": "10.0.0.1,proxy.local"}, "forwarded-allow-ips: 'proxy.local'"),
        ({"tenants": "acme," + "x" * 200}, "--tenants"),
        ({"header_timeout_s": 0.0}, "--header-timeout-s"),
        ({"max_connections": 0}, "--max-connections"),
        ({"max_header_bytes": 10}, "--max-header-bytes"),
    ],
)
def test_security_settings_say_what_to_fix(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        ServerSettings(**kwargs)


def test_security_settings_defaults_and_parsing() -> None:
    s = ServerSettings(forwarded_allow_ips=" 10.0.0.1, 10.1.0.0/16 ,*", tenants="acme, globex,")
    assert s.forwarded_networks == ["10.0.0.1", "10.1.0.0/16", "*"]
    assert s.tenant_names == {"acme", "globex"}
    d = ServerSettings()
    assert d.forwarded_networks == [] and not d.open_metrics and d.adapter_dirs == ()
    assert (d.header_timeout_s, d.keep_alive_s, d.max_connections) == (10.0, 5.0, 512)


def test_text_string_limit_defaults_to_64_bytes_per_token(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[text]\nmax_length = 128\n")
    text = ModelConfig.from_toml(path, "m").text
    assert text is not None and text.string_bytes == 64 * 128 and text.max_strings == 2048
    path.write_text("[text]\nmax_bytes = 100\n")
    text = ModelConfig.from_toml(path, "m").text
    assert text is not None and text.string_bytes == 100
