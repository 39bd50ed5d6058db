#!/usr/bin/env python3
"""The fleet overlay's Valkey configuration, run for real: its make-acl.sh and valkey.conf
(taken from deploy/kubernetes/rendered/fleet.yaml, so exactly what the cluster gets) start a
local `redis-server` (Debian's Redis 7 stands in for Valkey 8: the same config and ACL
language), and two real nimgate processes with the overlay's `[ratelimit]` table share one
client's limit through it.

    python deploy/tests/test_fleet_redis.py [BIN_DIR]

BIN_DIR holds `nimgate` and `fake-nim` (default: target/release if both are there, else
target/debug). Without them, or without redis-server, it says SKIPPED and exits 0 (like
container_e2e.sh); deploy/validate.sh installs redis-server first. Prints
`fleet: N passed, M failed` and exits non-zero on a failure. Only loopback is used; every
process it starts is ended by its pid.

What it checks:
* make-acl.sh writes an ACL file (mode 0600) holding the password's SHA-256 and not the
  password, and refuses an empty or a two-line password file;
* the server started with valkey.conf (only port, bind, aclfile and dir moved to a temporary
  directory) refuses commands before AUTH and a wrong password, and after AUTH with the right
  one still refuses what nimgate never sends (CONFIG, KEYS, FLUSHALL, PING) and keys outside the
  `[ratelimit] key_prefix`; persistence is off (CONFIG is refused to the only user, so this is
  read from the config and from the absence of files in its dir after traffic);
* two nimgate processes with the overlay's `[ratelimit]` (redis_url pointed at this server,
  redis_password_file at the test's password file) share one client's burst: what the first
  accepted, the second refuses (429 rate_limit_exceeded), and the shared key exists in Redis;
  `nimgate_ratelimit_backend_up 1`, no backend errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
import urllib.error
import urllib.request
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[1]
ROOT = DEPLOY.parent
RENDERED = DEPLOY / "kubernetes" / "rendered" / "fleet.yaml"
NIM_KEY = "nvapi-fleet-test-placeholder-key"
CLIENT_KEY = "ngk_fleet_test_client_key_a"


def rendered() -> tuple[dict, dict, str, str, list[str]]:
    """(nimgate config, Valkey ConfigMap data, make-acl.sh, valkey.conf, acl init args)."""
    docs = [d for d in yaml.safe_load_all(RENDERED.read_text(encoding="utf-8"))
            if isinstance(d, dict)]
    cms = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ConfigMap"}
    cfg = tomllib.loads(next(c["data"]["nimgate.toml"] for c in cms.values()
                             if "nimgate.toml" in c.get("data", {})))
    redis = next(d for d in docs if d.get("kind") == "Deployment"
                 and d["metadata"]["name"] == "nimgate-redis")
    spec = redis["spec"]["template"]["spec"]
    conf_cm = next(v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v)
    data = cms[conf_cm]["data"]
    init = next(c for c in spec["initContainers"] if c["name"] == "acl")
    return cfg, data, data["make-acl.sh"], data["valkey.conf"], init["args"]


class Procs:
    """Processes this test started; ended by pid, never by name."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args, **kw) -> subprocess.Popen:
        p = subprocess.Popen(args, **kw)
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = check()
            if v:
                return v
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# RESP, enough to ask the server what nimgate's client would


def resp(conn: socket.socket, *args: str | bytes):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    conn.sendall(out)
    return read_reply(conn.makefile("rb"))


def read_reply(f):
    line = f.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:].decode()
    if kind == b"+":
        return rest
    if kind == b"-":
        return RedisError(rest)
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2].decode()
    if kind == b"*":
        return [read_reply(f) for _ in range(int(rest))]
    raise AssertionError(f"bad reply {line!r}")


class RedisError(str):
    pass


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def error_word(reply) -> str:
    assert isinstance(reply, RedisError), f"expected an error, got {reply!r}"
    return reply.split(" ", 1)[0]


# --------------------------------------------------------------------------------------------
# The fixture: ACL file, server, two gateways


class Fleet:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="nimgate-fleet-"))
        self.procs = Procs()
        self.cfg, _, self.script, self.conf, self.acl_args = rendered()
        self.password = secrets.token_hex(32)
        self.pw_file = self.dir / "password"
        self.pw_file.write_text(self.password + "\n", encoding="utf-8")
        self.pw_file.chmod(0o400)
        (self.dir / "make-acl.sh").write_text(self.script, encoding="utf-8")
        self.acl = self.dir / "users.acl"
        self.prefix = self.acl_args[2]
        self.port = free_port()
        self.gateways: list[tuple[str, str, subprocess.Popen]] = []

    def make_acl(self, pw_file: Path, out: Path) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", str(self.dir / "make-acl.sh"), str(pw_file), str(out),
                               self.prefix], capture_output=True, text=True, timeout=30)

    def start_server(self) -> None:
        data = self.dir / "data"
        data.mkdir()
        moves = {"port": str(self.port), "bind": "127.0.0.1", "aclfile": str(self.acl),
                 "dir": str(data)}
        lines = []
        for line in self.conf.splitlines():
            word = line.split(" ", 1)[0]
            if word in moves:
                line = f"{word} {moves.pop(word)}"
            lines.append(line)
        assert not moves, f"valkey.conf lacks {sorted(moves)}"
        conf = self.dir / "valkey.conf"
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.server_log = open(self.dir / "server.log", "wb")
        self.procs.start(["redis-server", str(conf)], stdout=self.server_log,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for("redis-server", lambda: connect(self.port).close() or True)

    def start_gateways(self, n: int) -> None:
        key = self.dir / "nim-key"
        key.write_text(NIM_KEY + "\n", encoding="utf-8")
        key.chmod(0o600)
        fake = self.procs.start([str(self.bin_dir / "fake-nim"), "--listen", "127.0.0.1:0",
                                 "--key-file", str(key)], stdout=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True)
        nim = re.search(r"listening on (\S+)", fake.stdout.readline())[1]
        rl = dict(self.cfg["ratelimit"])
        rl["redis_url"] = re.sub(r"//[^/]+/", f"//127.0.0.1:{self.port}/", rl["redis_url"])
        rl["redis_password_file"] = str(self.pw_file)
        table = "\n".join(f"{k} = {json.dumps(v)}" for k, v in rl.items())
        digest = hashlib.sha256(CLIENT_KEY.encode()).hexdigest()
        for i in range(n):
            cfg = self.dir / f"nimgate-{i}.toml"
            cfg.write_text(f"""[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[upstream]
url = "http://{nim}"
[secret]
source = "file"
path = "{key}"
[[clients]]
id = "fleet-test"
key_sha256 = "{digest}"
rpm = 1
burst = 3
[audit]
path = "{self.dir / f'audit-{i}.jsonl'}"
[ratelimit]
{table}
""", encoding="utf-8")
            log = open(self.dir / f"nimgate-{i}.log", "w+", encoding="utf-8")
            p = self.procs.start([str(self.bin_dir / "nimgate"), "serve", "--config", str(cfg)],
                                 stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL,
                                 env={"PATH": os.environ.get("PATH", ""), "RUST_LOG": "info"})

            def serving(log=log, p=p):
                assert p.poll() is None, f"nimgate exited: {Path(log.name).read_text()}"
                m = re.search(r"nimgate serving listen=(\S+) admin=(\S+)",
                              Path(log.name).read_text(encoding="utf-8"))
                return m and (m[1], m[2])

            gw, admin = wait_for("nimgate serving", serving)
            wait_for("/readyz", lambda admin=admin: http("GET", f"http://{admin}/readyz")[0] == 200)
            self.gateways.append((gw, admin, p))

    def close(self) -> None:
        self.procs.stop_all()
        shutil.rmtree(self.dir, ignore_errors=True)


def http(method: str, url: str, key: str | None = None, body: bytes | None = None):
    req = urllib.request.Request(url, data=body, method=method)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def chat(gw: str):
    body = json.dumps({"model": "meta/llama-3.1-8b-instruct",
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    return http("POST", f"http://{gw}/v1/chat/completions", CLIENT_KEY, body)


# --------------------------------------------------------------------------------------------
# Tests (share one Fleet: one server, two gateways)


def test_make_acl_writes_the_password_hash_only(f: Fleet):
    r = f.make_acl(f.pw_file, f.acl)
    assert r.returncode == 0, r.stderr
    text = f.acl.read_text(encoding="utf-8")
    assert f.password not in text and f.password not in r.stdout + r.stderr
    want = hashlib.sha256(f.password.encode()).hexdigest()
    assert re.fullmatch(rf"user default on #{want} resetkeys ~{f.prefix}:\* resetchannels "
                        r"-@all( \+[a-z]+)+\n", text), text
    assert f.acl.stat().st_mode & 0o077 == 0, oct(f.acl.stat().st_mode)


def test_make_acl_refuses_empty_and_multiline_passwords(f: Fleet):
    for name, content in (("empty", "\n"), ("two-lines", "a\nb\n")):
        pw = f.dir / name
        pw.write_text(content, encoding="utf-8")
        out = f.dir / f"{name}.acl"
        r = f.make_acl(pw, out)
        assert r.returncode != 0 and not out.exists(), (name, r.returncode, r.stderr)


def test_server_requires_the_password(f: Fleet):
    f.start_server()
    with connect(f.port) as c:
        assert error_word(resp(c, "EVAL", "return 1", "0")) == "NOAUTH"
        assert error_word(resp(c, "AUTH", "not-the-password")) == "WRONGPASS"
        assert error_word(resp(c, "GET", f"{f.prefix}:x")) == "NOAUTH"


def test_server_allows_nimgate_commands_on_nimgate_keys_only(f: Fleet):
    with connect(f.port) as c:
        assert resp(c, "AUTH", f.password) == "OK"
        key = f"{f.prefix}:{{acl-probe}}:rq"
        script = ("local t = redis.call('TIME') redis.call('SET', KEYS[1], t[1], 'PX', 1000) "
                  "redis.call('INCRBY', KEYS[1], 1) redis.call('EXPIRE', KEYS[1], 1) "
                  "return redis.call('GET', KEYS[1])")
        assert int(resp(c, "EVAL", script, "1", key)) > 0
        for cmd in (["CONFIG", "GET", "*"], ["KEYS", "*"], ["FLUSHALL"], ["PING"],
                    ["SAVE"], ["SCRIPT", "FLUSH"], ["ACL", "LIST"]):
            assert error_word(resp(c, *cmd)) == "NOPERM", cmd
        assert error_word(resp(c, "EVAL", "return redis.call('GET', KEYS[1])", "1",
                               "other:key")) == "NOPERM"
        assert error_word(resp(c, "GET", "other:key")) == "NOPERM"


def test_two_gateways_share_one_limit_through_it(f: Fleet):
    f.start_gateways(2)
    (a, a_admin, _), (b, b_admin, _) = f.gateways
    first = [chat(a)[0] for _ in range(3)]
    assert first == [200, 200, 200], first
    # The burst of 3 is the fleet's: the second gateway has none left for this client.
    status, body = chat(b)
    assert status == 429 and json.loads(body)["error"]["code"] == "rate_limit_exceeded", body
    with connect(f.port) as c:
        assert resp(c, "AUTH", f.password) == "OK"
        assert resp(c, "GET", f"{f.prefix}:{{fleet-test}}:rq") is not None
    for admin in (a_admin, b_admin):
        _, metrics = http("GET", f"http://{admin}/metrics")
        assert "nimgate_ratelimit_backend_up 1" in metrics, metrics
        assert "nimgate_ratelimit_backend_errors_total 0" in metrics, metrics
    for i in range(len(f.gateways)):
        log = (f.dir / f"nimgate-{i}.log").read_text(encoding="utf-8")
        assert "nimgate serving" in log and f.password not in log


def test_nothing_is_persisted(f: Fleet):
    conf = {line.split(" ", 1)[0]: line.split(" ", 1)[-1] for line in f.conf.splitlines()
            if line and not line.startswith("#")}
    assert conf["save"] == '""' and conf["appendonly"] == "no", conf
    assert list((f.dir / "data").iterdir()) == [], "the server wrote files in its dir"


def main(argv: list[str]) -> int:
    bin_dir = Path(argv[1]) if len(argv) > 1 else next(
        (d for d in (ROOT / "target" / "release", ROOT / "target" / "debug")
         if (d / "nimgate").is_file() and (d / "fake-nim").is_file()), None)
    if shutil.which("redis-server") is None:
        print("SKIPPED: redis-server is not installed (apt-get install redis-server)")
        return 0
    if bin_dir is None or not (bin_dir / "nimgate").is_file():
        print("SKIPPED: no nimgate + fake-nim binaries (cargo build --bins)")
        return 0
    print(f"binaries: {bin_dir}; server: {subprocess.run(['redis-server', '--version'], capture_output=True, text=True).stdout.strip()}")
    tests = [(n, fn) for n, fn in globals().items() if n.startswith("test_") and callable(fn)]
    f = Fleet(bin_dir)
    passed = failed = 0
    try:
        for name, fn in tests:
            try:
                fn(f)
            except Exception as e:  # noqa: BLE001 - report every failure, keep going
                failed += 1
                here = [x for x in traceback.extract_tb(e.__traceback__) if x.filename == __file__]
                at = f" (line {here[-1].lineno}: {here[-1].line})" if here else ""
                print(f"FAIL {name}: {type(e).__name__}: {str(e)[:2000]}{at}")
            else:
                passed += 1
                print(f"ok   {name}")
    finally:
        f.close()
    print(f"fleet: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
