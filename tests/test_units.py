"""Small pure parts: canonical keys, encoding negotiation, CPU detection, settings."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from bundler.build.marks import QUERY_MARK, RAW_MARK, rename, render
from bundler.cpus import cgroup_cpu_limit, cpus_from
from bundler.errors import BadRequest, ConfigError
from bundler.negotiate import choose_encoding
from bundler.settings import Settings
from bundler.sources import version_sort_key
from bundler.spec import BuildOptions, parse_query

OPTIONS = BuildOptions(target="es2018", registry_name="r")


def parse(query: str) -> tuple[str, tuple[str, ...], str]:
    pairs = [tuple(p.split("=", 1)) for p in query.split("&")]
    spec, _ = parse_query(
        pairs,  # type: ignore[arg-type]
        default_version="1.0.0",
        options=OPTIONS,
        max_modules=50,
        max_chars=200,
    )
    return spec.version, spec.modules, spec.key


def test_canonical_key_ignores_order_and_duplicates() -> None:
    a = parse("modules=b,a,c&v=1.0.0")
    b = parse("modules=c,a,b,a&v=1.0.0")
    assert a == b
    assert a[1] == ("a", "b", "c")


def test_key_depends_on_version_modules_and_options() -> None:
    base = parse("modules=a&v=1.0.0")[2]
    assert parse("modules=a&v=1.0.1")[2] != base
    assert parse("modules=a,b&v=1.0.0")[2] != base
    other = parse_query(
        [("modules", "a"), ("v", "1.0.0")],
        default_version="1.0.0",
        options=BuildOptions(target="es2020", registry_name="r"),
        max_modules=50,
        max_chars=200,
    )[0]
    assert other.key != base


def test_default_version_used_when_not_pinned() -> None:
    spec, pinned = parse_query(
        [("modules", "a")], default_version="2.0.0", options=OPTIONS, max_modules=5, max_chars=9
    )
    assert spec.version == "2.0.0" and not pinned


def test_scoped_and_dotted_names_are_valid() -> None:
    assert parse("modules=@scope/pkg/index.js,lib/a-b_c+d.js")[1] == (
        "@scope/pkg/index.js",
        "lib/a-b_c+d.js",
    )


def test_count_is_checked_before_names() -> None:
    with pytest.raises(BadRequest, match="too many modules"):
        parse("modules=" + ",".join(["../bad"] * 60))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "identity"),
        ("", "identity"),
        ("gzip", "gzip"),
        ("gzip, deflate, br", "br"),
        ("gzip, deflate, br;q=0", "gzip"),
        ("br;q=0.5, gzip;q=0.8", "gzip"),
        ("GZIP;q=0.5", "gzip"),
        ("gzip;q=0", "identity"),
        ("identity;q=0.5, gzip;q=0.4", "identity"),
        ("*", "br"),
        ("*;q=0, identity;q=0.1", "identity"),
        ("deflate", "identity"),
        ("gzip;q=nonsense", "identity"),
    ],
)
def test_accept_encoding(header: str | None, expected: str) -> None:
    assert choose_encoding(header) == expected


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpu_limit(tmp_path) == 4
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert cgroup_cpu_limit(tmp_path) is None


def test_cpus_take_the_smaller_of_affinity_and_quota() -> None:
    assert cpus_from(64, 2.0) == 2
    assert cpus_from(64, 1.5) == 1  # the half CPU is left to the server
    assert cpus_from(64, 0.25) == 1
    assert cpus_from(4, None) == 4
    assert cpus_from(2, 8.0) == 2


def test_settings_from_env() -> None:
    s = Settings.from_env({"BUNDLER_PORT": "9000", "BUNDLER_BUILD_TIMEOUT_S": "2.5"})
    assert s.port == 9000 and s.build_timeout_s == 2.5


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BUNDLER_PORT": "eighty"}, "BUNDLER_PORT must be an integer, got 'eighty'"),
        ({"BUNDLER_PORT": "0"}, "port must be 1-65535"),
        ({"BUNDLER_MAX_MODULES": "0"}, "max_modules must be at least 1"),
        ({"BUNDLER_BUILD_TIMEOUT_S": "-1"}, "build_timeout_s must be positive"),
        ({"BUNDLER_REGISTRY_NAME": "a-b"}, "registry_name must be a JavaScript identifier"),
        ({"BUNDLER_ESBUILD_TARGET": "es2018 --outdir=/"}, "esbuild_target looks wrong"),
        ({"BUNDLER_LOG_LEVEL": "LOUD"}, "log_level must be"),
        ({"BUNDLER_TRUSTED_PROXIES": "10.0.0.0/33"}, "trusted_proxies: '10.0.0.0/33' is not"),
        ({"BUNDLER_CLIENT_HEADER": "x forwarded"}, "client_header must be a header name"),
        ({"BUNDLER_CORS_ORIGINS": "https://shop.example.com/app"}, "cors_origins is "),
        ({"BUNDLER_ESM_TARGET": "chrome 90"}, "esm_target looks wrong"),
        ({"BUNDLER_CLIENT_BUILDS_PER_S": "-1"}, "client_builds_per_s must not be negative"),
    ],
)
def test_bad_settings_fail_with_one_clear_message(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match="^.*" + message.replace("(", r"\(")):
        Settings.from_env(env)


def test_pool_and_threads() -> None:
    s = Settings(build_pool_size=1, build_threads=0)
    assert s.pool_size == 1 and s.threads_per_build >= 1
    assert Settings(build_pool_size=3, build_threads=2).threads_per_build == 2


def test_version_order() -> None:
    versions = ["1.10.0", "1.9.0", "1.9.0-beta", "2.0.0", "1.0.0"]
    assert sorted(versions, key=version_sort_key) == [
        "1.0.0",
        "1.9.0",
        "1.9.0-beta",
        "1.10.0",
        "2.0.0",
    ]


def test_the_configuration_reference_documents_every_setting() -> None:
    root = Path(__file__).resolve().parent.parent
    reference = (root / "docs" / "configuration.md").read_text()
    for field in dataclasses.fields(Settings):
        assert f"`--{field.name.replace('_', '-')}`" in reference, field.name
        assert f"`BUNDLER_{field.name.upper()}`" in reference, field.name
    # The README links the reference, and every doc it links exists.
    readme = (root / "README.md").read_text()
    for link in ("docs/configuration.md", "docs/http-api.md", "docs/operations.md", "LICENSE"):
        assert f"({link}" in readme and (root / link).exists(), link


def test_redis_py_is_not_loaded_without_redis(tmp_path: Path) -> None:
    """7 MiB of RSS that a replica without --redis-url never needs: the service is made
    (in a fresh interpreter) and redis-py is not in it. With --redis-url it is."""
    examples = Path(__file__).resolve().parent.parent / "examples" / "components"
    script = (
        "import sys\n"
        "from bundler.app import create_app\n"
        "from bundler.settings import Settings\n"
        f"create_app(Settings.from_env({{}}, source={str(examples)!r}, "
        f"data_dir={str(tmp_path)!r}, redis_url=sys.argv[1]))\n"
        "print('redis' in sys.modules)\n"
    )
    for redis_url, loaded in (("", "False"), ("redis://127.0.0.1:1/0", "True")):
        out = subprocess.run(
            [sys.executable, "-c", script, redis_url], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == loaded


@pytest.mark.parametrize("cached", [True, False], ids=["service", "naive"])
def test_package_json_is_parsed_once_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cached: bool
) -> None:
    """Every module name asked for the first time reads the package's package.json, on
    the event loop (date-fns's is 200 KB). It is parsed once while the file stays the
    same, and again once it changes (a directory source). Naive: once per name."""
    from bundler import resolve

    root = tmp_path / "pkg"
    root.mkdir()
    (root / "package.json").write_text('{"name": "pkg", "exports": {"./a": "./a.js"}}')
    for i in range(50):
        (root / f"m{i}.js").write_text(f"export const v = {i};\n")
    parses = 0
    real_loads = resolve.json.loads

    def counting(data: str | bytes) -> object:
        nonlocal parses
        parses += 1
        return real_loads(data)

    monkeypatch.setattr(resolve.json, "loads", counting)
    if not cached:  # as before: nothing kept

        class Forgetful(dict[object, object]):
            def __setitem__(self, key: object, value: object) -> None:
                pass

        monkeypatch.setattr(resolve, "PACKAGE_JSONS", Forgetful())
    resolve.resolve_modules(root, "1.0.0", [f"m{i}" for i in range(50)])
    assert parses == (1 if cached else 50), parses
    (root / "package.json").write_text('{"name": "pkg", "version": "2"}')
    assert resolve.read_package_json(root) == {"name": "pkg", "version": "2"}


def test_a_rendered_bundle_can_be_renamed_to_another_version_as_if_built_for_it() -> None:
    template = (
        f'push({{version:"{RAW_MARK}"}});url(assets/{RAW_MARK}/a.png)\n'
        f"//# sourceMappingURL=bundle.js.map?modules=a&v={QUERY_MARK}\n"
    ).encode()
    old, marks = render(template, "1.0.0")
    assert old == (
        b'push({version:"1.0.0"});url(assets/1.0.0/a.png)\n'
        b"//# sourceMappingURL=bundle.js.map?modules=a&v=1.0.0\n"
    )
    new, new_marks = rename(old, marks, "1.0.0", "2.0.0-rc.1+build")
    # The query form is URL-encoded, as BundleSpec.query writes it.
    assert (new, new_marks) == render(template, "2.0.0-rc.1+build")
    assert b"v=2.0.0-rc.1%2Bbuild" in new and b"assets/2.0.0-rc.1+build/" in new
    with pytest.raises(ValueError):
        rename(old, marks, "1.0.1", "2.0.0")  # the marks do not hold that version
