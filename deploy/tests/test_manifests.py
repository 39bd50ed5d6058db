#!/usr/bin/env python3
"""Policy test for nimgate's deployment manifests: no secret ever sits in an env var, and any
volume that holds a secret lives in memory.

Run it as a script (`python deploy/tests/test_manifests.py`, prints `deploy: N passed, M failed`
and exits non-zero on a failure) or under pytest. Needs PyYAML; deploy/validate.sh runs it from
its venv after checking that deploy/kubernetes/rendered/ is up to date.

What it checks, on every YAML file under deploy/kubernetes (sources and rendered output) and on
the rendered overlays as wholes:

* Env: no container (containers, initContainers, ephemeralContainers) has an env var whose NAME
  contains KEY, TOKEN, SECRET, PASS (PASSWORD, PASSWD, ...), AUTH (REDISCLI_AUTH),
  CREDENTIAL or PRIVATE (flagged whatever the value: a name like that invites a secret), whose
  VALUE looks like a credential (known token prefixes, PEM blocks, JWTs, long high-entropy
  strings), or that comes from `valueFrom.secretKeyRef`; no `envFrom.secretRef`; no
  secret-looking command-line argument, and no Redis password on one (`requirepass`,
  `masterauth`, redis-cli `-a`/`--pass`, an inline ACL `>password`).
* Volumes (the decision, documented in deploy/README.md):
    - `secret` volumes and `projected` volumes (secret / serviceAccountToken / configMap /
      downwardAPI sources) are accepted: the kubelet keeps them on tmpfs;
    - an `emptyDir` holds secrets when a Vault Agent mounts it writable, or when its name or a
      mount path says so (secret, vault, token, cred, key); such an emptyDir must have
      `medium: Memory`; so must an emptyDir that a container reading a Secret writes (the
      Valkey ACL file built from the Redis password);
    - a `hostPath` is never accepted, and no persistent volume may be mounted where secrets go;
    - where nimgate's config names a file (`[secret] path` for `source = "file"`,
      `[secret.auth] jwt_file`, `[ratelimit] redis_password_file`), that file must sit on a
      memory-backed volume, and the JWT on a projected ServiceAccount token with an audience;
      `ratelimit.redis_url` carries no `user:pass@`.
* No pod automounts the API token; every ServiceAccount says automount false.
* No Secret object with data is kept in the repo; no ConfigMap value looks like a credential;
  nimgate configs use only known keys and never a key that would hold a secret literally; no
  ConfigMap holds a Redis password (`requirepass`, `masterauth`, an ACL `>password`).
* Topology: sidecar keeps the NIM unexposed; standalone has >= 2 replicas, PDB, HPA,
  anti-affinity and a NetworkPolicy letting only nimgate reach the NIM; the Vault Agent overlay
  writes the key to memory and nimgate holds no Vault token there. Fleet: the standalone
  invariants, plus one Valkey (Recreate, persistence off, hardened, resources) whose password
  reaches it and nimgate only as files (Secret volume / projected source), turned into an ACL
  of its SHA-256 on tmpfs that allows nimgate's key prefix only; any Redis/Valkey pod is
  reachable by nimgate pods on TCP 6379 only, connects nowhere, and nimgate's egress and
  `redis_url` point at its Service.
* Command lines: no `NAME=` assignment of a secret-named variable in a container's command or
  args, with ONE allowed exception: the model download Job (Job nim-model-download, container
  download) may `export NGC_API_KEY="$(cat FILE)"` where FILE sits on a read-only mounted,
  memory-backed volume. NIM's downloader takes its NGC key from that variable only; reading it
  from the Vault Agent's tmpfs file inside the shell keeps it out of the manifest (pod spec,
  etcd, `kubectl describe`) and confines it to that short-lived process (ALLOWED_FILE_TO_ENV).
* Image pulls: every pod running an nvcr.io image names the docker-registry Secret ngc-registry
  in imagePullSecrets; no other pod does; no container, volume or env refers to that Secret.
* Model cache: the download Job and the serving NIMs use the same profile ConfigMap and cache
  volume; only the Job has the NGC key, Vault identity and egress.
* Shutdown: nimgate is a regular container; each pod's terminationGracePeriodSeconds covers
  drain_delay + shutdown_grace + margin; in the sidecar pods the NIM's preStop sleep outlasts
  nimgate's drain.
* Vault CA: whatever talks to Vault mounts the ConfigMap vault-ca read-only where its config
  (`ca_file`, agent `ca_cert`) points.
* The optional ServiceMonitor component: a minimal monitoring.coreos.com/v1 schema check, and
  its selector and port match the metrics Service and the pods' admin port.
* Negative fixtures: each file in deploy/tests/fixtures/ declares `# expect: <text>` and must be
  rejected with a violation containing that text, so the checks can be seen to fail.
"""

from __future__ import annotations

import math
import re
import sys
import tomllib
import traceback
from collections import Counter
from pathlib import Path

try:
    import yaml
except ImportError:  # e.g. collected by a repo-wide pytest run outside deploy/validate.sh's venv
    if "pytest" in sys.modules:
        import pytest

        pytest.skip("PyYAML missing: run `bash deploy/validate.sh`", allow_module_level=True)
    raise

DEPLOY = Path(__file__).resolve().parents[1]
K8S = DEPLOY / "kubernetes"
RENDERED = K8S / "rendered"
FIXTURES = DEPLOY / "tests" / "fixtures"
OVERLAYS = ("sidecar", "standalone", "vault-agent", "fleet")

SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASS|AUTH|CREDENTIAL|PRIVATE", re.I)
SECRET_VALUE = re.compile(
    r"(?:^|[\s=:\"'])(?:"
    r"nvapi-[A-Za-z0-9_-]{8,}"  # NVIDIA API / NGC keys
    r"|hv[sbr]\.[A-Za-z0-9_-]{16,}"  # Vault service/batch/recovery tokens
    r"|s\.[A-Za-z0-9]{24}\b"  # legacy Vault tokens
    r"|sk-[A-Za-z0-9_-]{16,}"  # OpenAI-style keys
    r"|gh[pousr]_[A-Za-z0-9]{20,}"  # GitHub tokens
    r"|AKIA[0-9A-Z]{16}"  # AWS access key ids
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}"  # JWTs
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r")"
)
SECRET_ARG = re.compile(r"--?[A-Za-z_-]*(key|token|secret|password|passwd)[A-Za-z_-]*=\S", re.I)
# A Redis/Valkey password handed over on a command line: `--requirepass X`, `masterauth`,
# redis-cli's `-a X` / `--pass X`, or an inline ACL password rule (`user default on >X`).
REDIS_SECRET_ARG = re.compile(
    r"(?:^|[\s-])(?:requirepass|masterauth)\b|(?:^|\s)(?:-a|--pass)(?:\s|$)|\son\s.*\s>\S", re.I)
# The same in a config file (valkey.conf, an ACL file) kept in a ConfigMap.
REDIS_CONF_SECRET = re.compile(r"^\s*(?:requirepass|masterauth)\s+\S|^\s*user\s.*\s>\S", re.I | re.M)
SECRETISH_PATH = re.compile(r"secret|vault|token|cred|(^|[-_/.])keys?($|[-_/.])", re.I)
MEMORY_BACKED = {"secret", "projected"}
# `NAME=` (optionally after `export`) of a secret-named environment variable in a command line.
SECRET_ASSIGN = re.compile(r'(?:^|[\s;&|(])(?:export\s+)?([A-Z][A-Z0-9_]*)=("[^"]*"|\S*)')
# The one place a secret may go from a file into an env var, inside the container's shell:
# (workload, container, variable). See the module docstring.
ALLOWED_FILE_TO_ENV = {("Job/nim-model-download", "download", "NGC_API_KEY")}
FILE_TO_ENV_VALUE = re.compile(r'"\$\(cat (/[^)\s"]+)\)"')
NGC_PULL_SECRET = "ngc-registry"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "Pod", "CronJob"}

# nimgate config keys, per table (the design contract; see src/config/types.rs).
CONFIG_KEYS = {
    "": {"server", "admin", "upstream", "secret", "clients", "auth", "audit", "limits",
         "ratelimit"},
    "server": {"listen", "tls_cert", "tls_key", "route_prefixes", "drain_delay",
               "shutdown_grace", "workers"},
    "admin": {"listen"},
    "upstream": {"url", "auth_header", "auth_value", "connect_timeout", "response_timeout",
                 "http2", "pool_idle_timeout", "pool_max_idle", "ca_file",
                 "retry_on_auth_failure"},
    "secret:vault": {"source", "address", "mount", "path", "kv_version", "field", "version",
                     "refresh", "max_staleness", "namespace", "ca_file", "timeout", "auth"},
    "secret:file": {"source", "path", "json_pointer", "poll_interval"},
    "secret.auth:kubernetes": {"method", "role", "jwt_file", "mount"},
    "secret.auth:approle": {"method", "role_id_file", "secret_id_file", "mount"},
    "secret.auth:token": {"method", "token_file"},
    "auth": {"clients_file"},
    "ratelimit": {"backend", "redis_url", "redis_password_file", "ca_file", "failure_mode",
                  "timeout", "key_prefix", "stream_usage"},
    "audit": {"enabled", "path", "fsync", "fsync_interval", "max_bytes", "keep", "max_wait",
              "queue"},
}
# Keys that would hold a credential literally: never allowed anywhere in a config.
LITERAL_SECRET_KEYS = {"token", "secret_id", "role_id", "api_key", "key", "password", "jwt",
                       "redis_password"}


# --------------------------------------------------------------------------------------------
# Loading


def load_docs(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.is_file())


def rendered(overlay: str) -> list[dict]:
    path = RENDERED / f"{overlay}.yaml"
    assert path.is_file(), f"{path} missing: run `bash deploy/validate.sh --update`"
    return load_docs(path)


def pod_spec(doc: dict) -> dict | None:
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    if kind in WORKLOAD_KINDS:
        return ((spec.get("template") or {}).get("spec")) or None
    return None


def containers(spec: dict) -> list[dict]:
    out = []
    for field in ("initContainers", "containers", "ephemeralContainers"):
        out.extend(c for c in spec.get(field) or [] if isinstance(c, dict))
    return out


def entropy(s: str) -> float:
    counts = Counter(s)
    return -sum(n / len(s) * math.log2(n / len(s)) for n in counts.values())


def looks_secret_value(value: str) -> bool:
    if SECRET_VALUE.search(value):
        return True
    # A long unbroken high-entropy token with letters and digits (not a path, URL, sentence
    # or hex digest: hex tops out at 4 bits of entropy per character).
    return (
        bool(re.fullmatch(r"[A-Za-z0-9+/_=-]{32,}", value))
        and not value.startswith("/")
        and bool(re.search(r"[0-9]", value))
        and bool(re.search(r"[A-Za-z]", value))
        and entropy(value) > 4.2
    )


def is_vault_agent(c: dict) -> bool:
    return "vault" in str(c.get("image", "")).lower() or "vault" in str(c.get("name", "")).lower()


def name_of(doc: dict) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


# --------------------------------------------------------------------------------------------
# Checks: each returns a list of violation strings (empty = fine)


def env_violations(doc: dict, configmaps: dict[str, dict] | None = None) -> list[str]:
    spec = pod_spec(doc)
    if spec is None:
        return []
    out = []
    for c in containers(spec):
        where = f"{name_of(doc)} container {c.get('name')}"
        for e in c.get("env") or []:
            n, v = str(e.get("name", "")), e.get("value")
            if SECRET_NAME.search(n):
                out.append(f"{where}: env var {n} has a secret-like name")
            if isinstance(v, str) and looks_secret_value(v):
                out.append(f"{where}: env var {n} has a secret-like value")
            if (e.get("valueFrom") or {}).get("secretKeyRef") is not None:
                out.append(f"{where}: env var {n} comes from a Secret (valueFrom.secretKeyRef)")
        for ef in c.get("envFrom") or []:
            if ef.get("secretRef") is not None:
                out.append(f"{where}: envFrom secretRef puts a Secret into env vars")
            ref = (ef.get("configMapRef") or {}).get("name")
            if ref and configmaps and ref in configmaps:
                for k, v in ((configmaps[ref].get("data")) or {}).items():
                    if SECRET_NAME.search(k) or looks_secret_value(str(v)):
                        out.append(f"{where}: envFrom ConfigMap {ref} key {k} looks secret")
        for arg in [*(c.get("command") or []), *(c.get("args") or [])]:
            if SECRET_ARG.search(str(arg)) or looks_secret_value(str(arg)):
                out.append(f"{where}: command-line argument looks like a secret")
            if REDIS_SECRET_ARG.search(str(arg)):
                out.append(f"{where}: a Redis password on the command line ({str(arg)[:40]!r})")
            out += _command_assignments(doc, spec, c, str(arg), where)
    return out


def _command_assignments(doc, spec, c, text, where) -> list[str]:
    out = []
    for m in SECRET_ASSIGN.finditer(text):
        var, value = m.group(1), m.group(2)
        if not SECRET_NAME.search(var):
            continue
        if (name_of(doc), c.get("name"), var) not in ALLOWED_FILE_TO_ENV:
            out.append(f"{where}: command line sets secret-named variable {var}")
            continue
        f = FILE_TO_ENV_VALUE.fullmatch(value)
        if not f:
            out.append(f"{where}: {var} may only be read from a file: {var}=\"$(cat FILE)\"")
            continue
        volumes = {v.get("name"): v for v in spec.get("volumes") or [] if isinstance(v, dict)}
        out += _file_on_memory(c, volumes, f.group(1), where, var)
    return out


def volume_violations(doc: dict) -> list[str]:
    spec = pod_spec(doc)
    if spec is None:
        return []
    out = []
    volumes = {v.get("name"): v for v in spec.get("volumes") or [] if isinstance(v, dict)}
    mounts: dict[str, list[tuple[dict, dict]]] = {}
    for c in containers(spec):
        for m in c.get("volumeMounts") or []:
            mounts.setdefault(m.get("name"), []).append((c, m))
    for vname, vol in volumes.items():
        where = f"{name_of(doc)} volume {vname}"
        used = mounts.get(vname, [])
        if "hostPath" in vol:
            out.append(f"{where}: hostPath volumes are not allowed")
            continue
        secretish = bool(SECRETISH_PATH.search(str(vname))) or any(
            SECRETISH_PATH.search(str(m.get("mountPath", ""))) for _, m in used
        )
        agent_writes = any(is_vault_agent(c) and not m.get("readOnly") for c, m in used)
        # Written by a container that reads a Secret (e.g. an ACL file made from a password).
        derived = any(not m.get("readOnly") and _reads_secret_volume(c, volumes)
                      for c, m in used)
        if "emptyDir" in vol:
            medium = ((vol.get("emptyDir") or {}).get("medium")) or ""
            if (secretish or agent_writes) and medium != "Memory":
                out.append(f"{where}: emptyDir holding secrets must have medium: Memory")
            elif derived and medium != "Memory":
                out.append(f"{where}: emptyDir written from a Secret must have medium: Memory")
        elif "persistentVolumeClaim" in vol or "ephemeral" in vol:
            if secretish or agent_writes:
                out.append(f"{where}: secrets on a persistent/ephemeral disk volume")
        elif "projected" in vol:
            for src in (vol.get("projected") or {}).get("sources") or []:
                sat = src.get("serviceAccountToken")
                if sat is not None:
                    if not sat.get("audience"):
                        out.append(f"{where}: projected ServiceAccount token without audience")
                    if int(sat.get("expirationSeconds", 3600)) > 3600:
                        out.append(f"{where}: projected ServiceAccount token lives > 1h")
    return out


def _reads_secret_volume(c: dict, volumes: dict) -> bool:
    for m in c.get("volumeMounts") or []:
        vol = volumes.get(m.get("name")) or {}
        if "secret" in vol or any("secret" in s for s in
                                  (vol.get("projected") or {}).get("sources") or []):
            return True
    return False


def is_patch(doc: dict) -> bool:
    """A kustomize patch of a workload: it lacks the required spec.selector."""
    return doc.get("kind") in WORKLOAD_KINDS - {"Pod", "Job", "CronJob"} and \
        "selector" not in (doc.get("spec") or {})


def automount_violations(doc: dict) -> list[str]:
    if doc.get("kind") == "ServiceAccount":
        if doc.get("automountServiceAccountToken") is not False:
            return [f"{name_of(doc)}: automountServiceAccountToken must be false"]
        return []
    spec = pod_spec(doc)
    # A patch that does not set the field inherits it from the base it patches.
    if spec is not None and not is_patch(doc) and spec.get("automountServiceAccountToken") \
            is not False:
        return [f"{name_of(doc)}: pod automountServiceAccountToken must be false"]
    return []


def config_violations(text: str, where: str) -> list[str]:
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return [f"{where}: invalid TOML: {e}"]
    out = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                if k.lower() in LITERAL_SECRET_KEYS:
                    out.append(f"{where}: key {path + k} would hold a secret literally")
                walk(v, f"{path}{k}.")
        elif isinstance(node, list):
            for item in node:
                walk(item, path)
        elif isinstance(node, str) and looks_secret_value(node) and \
                not path.endswith("key_sha256."):
            out.append(f"{where}: value of {path[:-1]} looks like a secret")

    walk(cfg, "")
    if "clients" in cfg and set(cfg) == {"clients"}:
        return out  # a clients file
    unknown = set(cfg) - CONFIG_KEYS[""]
    out += [f"{where}: unknown top-level table [{k}]" for k in sorted(unknown)]
    for table in ("server", "admin", "upstream", "auth", "audit", "ratelimit"):
        extra = set(cfg.get(table) or {}) - CONFIG_KEYS[table]
        out += [f"{where}: unknown key {table}.{k}" for k in sorted(extra)]
    sec = cfg.get("secret") or {}
    src = sec.get("source")
    if f"secret:{src}" not in CONFIG_KEYS:
        out.append(f"{where}: secret.source must be vault or file, not {src!r}")
    else:
        out += [f"{where}: unknown key secret.{k}"
                for k in sorted(set(sec) - CONFIG_KEYS[f"secret:{src}"])]
    if src == "vault":
        auth = sec.get("auth") or {}
        meth = auth.get("method")
        if f"secret.auth:{meth}" not in CONFIG_KEYS:
            out.append(f"{where}: secret.auth.method {meth!r} unknown")
        else:
            out += [f"{where}: unknown key secret.auth.{k}"
                    for k in sorted(set(auth) - CONFIG_KEYS[f"secret.auth:{meth}"])]
    return out


def configmap_violations(doc: dict) -> list[str]:
    out = []
    if doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
        out.append(f"{name_of(doc)}: Secret with data kept in the repository")
    if doc.get("kind") == "ConfigMap":
        for k, v in (doc.get("data") or {}).items():
            if k.endswith(".toml"):
                out += config_violations(str(v), f"{name_of(doc)}:{k}")
            elif SECRET_VALUE.search(str(v)):
                out.append(f"{name_of(doc)}: value of {k} looks like a secret")
            if REDIS_CONF_SECRET.search(str(v)):
                out.append(f"{name_of(doc)}: {k} holds a Redis password (requirepass, "
                           "masterauth or an ACL >password): build it from the mounted Secret")
    return out


def mount_for(container: dict, path: str) -> dict | None:
    best = None
    for m in container.get("volumeMounts") or []:
        mp = str(m.get("mountPath", "")).rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(str(best["mountPath"]).rstrip("/")):
                best = m
    return best


def config_file_violations(docs: list[dict]) -> list[str]:
    """Files named by nimgate's config must be on the right kind of volume in its pod."""
    out = []
    cms = {(d.get("metadata") or {}).get("name"): d for d in docs if d.get("kind") == "ConfigMap"}
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        volumes = {v.get("name"): v for v in spec.get("volumes") or []}
        for c in containers(spec):
            if c.get("name") != "nimgate":
                continue
            # The config: a ConfigMap key nimgate.toml projected at /etc/nimgate/nimgate.toml.
            cfg_text = None
            m = mount_for(c, "/etc/nimgate/nimgate.toml")
            vol = volumes.get(m.get("name")) if m else None
            srcs = ((vol or {}).get("projected") or {}).get("sources") or []
            if vol and "configMap" in vol:
                srcs = [{"configMap": vol["configMap"]}]
            for s in srcs:
                ref = (s.get("configMap") or {}).get("name")
                if ref in cms and "nimgate.toml" in (cms[ref].get("data") or {}):
                    cfg_text = cms[ref]["data"]["nimgate.toml"]
            where = f"{name_of(doc)} container nimgate"
            if cfg_text is None:
                out.append(f"{where}: no nimgate.toml from a ConfigMap at /etc/nimgate")
                continue
            cfg = tomllib.loads(cfg_text)
            sec = cfg.get("secret") or {}
            if sec.get("source") == "file":
                out += _file_on_memory(c, volumes, str(sec.get("path")), where, "secret.path")
            auth = sec.get("auth") or {}
            if sec.get("source") == "vault" and auth.get("method") == "kubernetes":
                jwt = str(auth.get("jwt_file", ""))
                m = mount_for(c, jwt)
                vol = volumes.get(m.get("name")) if m else None
                sats = [s["serviceAccountToken"]
                        for s in ((vol or {}).get("projected") or {}).get("sources") or []
                        if "serviceAccountToken" in s]
                if not sats or not all(s.get("audience") for s in sats):
                    out.append(f"{where}: jwt_file {jwt} is not a projected ServiceAccount "
                               "token with an audience")
            rl = cfg.get("ratelimit") or {}
            if rl.get("redis_password_file"):
                out += _file_on_memory(c, volumes, str(rl["redis_password_file"]), where,
                                       "ratelimit.redis_password_file")
            if "@" in str(rl.get("redis_url", "")):
                out.append(f"{where}: ratelimit.redis_url carries credentials (user:pass@)")
            clients = (cfg.get("auth") or {}).get("clients_file")
            if clients:
                m = mount_for(c, str(clients))
                vol = volumes.get(m.get("name")) if m else None
                if not vol or not ({"configMap", "secret", "projected"} & set(vol)):
                    out.append(f"{where}: clients_file {clients} is not on a ConfigMap/Secret")
    return out


def _file_on_memory(c, volumes, path, where, what) -> list[str]:
    m = mount_for(c, path)
    vol = volumes.get(m.get("name")) if m else None
    if vol is None:
        return [f"{where}: {what} {path} is on no volume (container filesystem)"]
    if "emptyDir" in vol and ((vol.get("emptyDir") or {}).get("medium")) == "Memory":
        return [] if m.get("readOnly") else [f"{where}: {what} volume must be mounted readOnly"]
    if MEMORY_BACKED & set(vol):
        return []
    return [f"{where}: {what} {path} is on a volume that is not in memory"]


def all_violations(docs: list[dict]) -> list[str]:
    cms = {(d.get("metadata") or {}).get("name"): d for d in docs if d.get("kind") == "ConfigMap"}
    out = []
    for d in docs:
        out += env_violations(d, cms) + volume_violations(d) + automount_violations(d)
        out += configmap_violations(d)
    return out + config_file_violations(docs) + redis_networkpolicy_violations(docs)


def selects(selector: dict | None, labels: dict) -> bool:
    """Whether a label selector (matchLabels; matchExpressions count as matching) picks labels."""
    sel = selector or {}
    return all(labels.get(k) == v for k, v in (sel.get("matchLabels") or {}).items())


def is_redis(c: dict) -> bool:
    image = str(c.get("image", "")).lower().rsplit("/", 1)[-1]
    return image.startswith(("redis", "valkey"))


NIMGATE_ONLY = [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "nimgate"}}}]


def redis_networkpolicy_violations(docs: list[dict]) -> list[str]:
    """A Redis/Valkey holding nimgate's limits is reachable by nimgate pods on 6379, nothing
    else, and reaches nothing: every NetworkPolicy that selects its pods is counted."""
    out = []
    nps = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None or is_patch(doc) or not any(is_redis(c) for c in containers(spec)):
            continue
        labels = ((doc["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
        mine = [n for n in nps if selects(n["spec"].get("podSelector"), labels)]
        where = f"{name_of(doc)} (Redis)"
        types = {t for n in mine for t in n["spec"].get("policyTypes") or []}
        if not {"Ingress", "Egress"} <= types:
            out.append(f"{where}: no NetworkPolicy isolates it for Ingress and Egress")
        for n in mine:
            for r in n["spec"].get("ingress") or []:
                ports = {(p.get("protocol", "TCP"), p.get("port")) for p in r.get("ports") or []}
                if r.get("from") != NIMGATE_ONLY or ports != {("TCP", 6379)}:
                    out.append(f"{where}: {name_of(n)} admits other than nimgate pods on "
                               f"TCP 6379: {r}")
            if n["spec"].get("egress"):
                out.append(f"{where}: {name_of(n)} lets it connect out")
    return out


# --------------------------------------------------------------------------------------------
# Tests


def test_every_manifest_parses():
    files = manifest_files()
    assert len(files) >= 15, f"only {len(files)} manifests found under {K8S}"
    for f in files:
        docs = load_docs(f)
        assert docs, f"{f} holds no YAML document"
        for d in docs:
            assert "kind" in d or "resources" in d or "patches" in d, f"{f}: not a manifest"


def test_rendered_overlays_exist():
    for o in OVERLAYS:
        kinds = {d.get("kind") for d in rendered(o)}
        assert {"Deployment", "ServiceAccount", "ConfigMap", "Service"} <= kinds, (o, kinds)


def test_no_secret_in_env_anywhere():
    bad = []
    for f in manifest_files():
        for d in load_docs(f):
            bad += [f"{f.relative_to(DEPLOY)}: {v}" for v in env_violations(d)]
    assert not bad, "\n".join(bad)


def test_secret_volumes_in_memory_anywhere():
    bad = []
    for f in manifest_files():
        for d in load_docs(f):
            bad += [f"{f.relative_to(DEPLOY)}: {v}" for v in volume_violations(d)]
    assert not bad, "\n".join(bad)


def test_rendered_overlays_have_no_violation():
    bad = []
    for o in OVERLAYS:
        bad += [f"{o}: {v}" for v in all_violations(rendered(o))]
    assert not bad, "\n".join(bad)


def test_nimgate_configs_use_known_keys_only():
    bad = []
    for f in sorted(K8S.rglob("*.toml")):
        bad += config_violations(f.read_text(encoding="utf-8"), str(f.relative_to(DEPLOY)))
    for f in sorted([*(DEPLOY / "vault").glob("*.toml"), *(DEPLOY / "docker").glob("*.toml")]):
        bad += config_violations(f.read_text(encoding="utf-8"), str(f.relative_to(DEPLOY)))
    assert not bad, "\n".join(bad)


def _deployment(docs, name):
    return next(d for d in docs if d.get("kind") == "Deployment" and d["metadata"]["name"] == name)


def _container(spec, name):
    return next(c for c in containers(spec) if c["name"] == name)


def test_nimgate_container_hardening_and_probes():
    for o in OVERLAYS:
        spec = pod_spec(_deployment(rendered(o), "nimgate"))
        c = _container(spec, "nimgate")
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"http": 8080, "admin": 9090}, ports
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
        assert c["args"] == ["serve", "--config", "/etc/nimgate/nimgate.toml"]
        assert "limits" in c["resources"] and "requests" in c["resources"]


def test_sidecar_nim_unexposed():
    docs = rendered("sidecar")
    spec = pod_spec(_deployment(docs, "nimgate"))
    nim = _container(spec, "nim")
    assert not nim.get("ports"), "the sidecar NIM must declare no port"
    assert nim["resources"]["limits"]["nvidia.com/gpu"] == 1
    cfg = tomllib.loads(next(d for d in docs if d.get("kind") == "ConfigMap"
                             and "nimgate.toml" in d.get("data", {}))["data"]["nimgate.toml"])
    assert cfg["upstream"]["url"] == "http://127.0.0.1:8000"
    svc = next(d for d in docs if d.get("kind") == "Service")
    assert [p["port"] for p in svc["spec"]["ports"]] == [8080]
    assert [d["metadata"]["name"] for d in docs if d.get("kind") == "Service"] == ["nimgate"]
    np = next(d for d in docs if d.get("kind") == "NetworkPolicy"
              and d["metadata"]["name"] == "nimgate")
    allowed = {p["port"] for r in np["spec"]["ingress"] for p in r.get("ports", [])}
    assert allowed == {8080, 9090}, allowed
    assert all(r.get("ports") for r in np["spec"]["ingress"]), "an ingress rule allows all ports"


def test_standalone_ha_and_isolation():
    for o in ("standalone", "fleet"):
        _standalone_ha_and_isolation(rendered(o))


def _standalone_ha_and_isolation(docs):
    gw = _deployment(docs, "nimgate")
    assert gw["spec"]["replicas"] >= 2
    assert gw["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    kinds = {d["kind"]: d for d in docs}
    assert kinds["PodDisruptionBudget"]["spec"]["minAvailable"] >= 1
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]
    assert hpa["minReplicas"] >= 2 and hpa["scaleTargetRef"]["name"] == "nimgate"
    nim_np = next(d for d in docs if d.get("kind") == "NetworkPolicy"
                  and d["metadata"]["name"] == "nim")
    assert nim_np["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "nim"}
    assert set(nim_np["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert not nim_np["spec"].get("egress"), "the NIM needs no egress"
    froms = [f for r in nim_np["spec"]["ingress"] for f in r.get("from", [])]
    assert froms == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "nimgate"}}}]
    nim = _deployment(docs, "nim")
    assert _container(pod_spec(nim), "nim")["resources"]["limits"]["nvidia.com/gpu"] == 1
    cfg = tomllib.loads(next(d for d in docs if d.get("kind") == "ConfigMap"
                             and "nimgate.toml" in d.get("data", {}))["data"]["nimgate.toml"])
    assert cfg["upstream"]["url"] == "http://nim.nimgate.svc:8000"


def test_vault_agent_overlay_keeps_key_in_memory():
    docs = rendered("vault-agent")
    spec = pod_spec(_deployment(docs, "nimgate"))
    agent = _container(spec, "vault-agent")
    assert agent.get("restartPolicy") == "Always", "the agent runs as a native sidecar"
    gw = _container(spec, "nimgate")
    assert not any(m["name"] == "vault-token" for m in gw["volumeMounts"]), \
        "nimgate must not hold a Vault login token in the Vault Agent pattern"
    vols = {v["name"]: v for v in spec["volumes"]}
    for m in agent["volumeMounts"]:
        if "emptyDir" in vols[m["name"]]:
            assert vols[m["name"]]["emptyDir"].get("medium") == "Memory", m
    cfg = tomllib.loads(next(d for d in docs if d.get("kind") == "ConfigMap"
                             and "nimgate.toml" in d.get("data", {}))["data"]["nimgate.toml"])
    assert cfg["secret"]["source"] == "file"


def test_vault_policy_reads_one_path():
    text = (DEPLOY / "vault" / "nimgate-policy.hcl").read_text(encoding="utf-8")
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    paths = re.findall(r'path\s+"([^"]+)"', code)
    assert paths == ["secret/data/nim/prod/model-a"], paths
    caps = re.findall(r"capabilities\s*=\s*\[([^\]]*)\]", code)
    assert [c.replace(" ", "") for c in caps] == ['"read"'], caps


def _nimgate_config(docs) -> dict:
    return tomllib.loads(next(d for d in docs if d.get("kind") == "ConfigMap"
                              and "nimgate.toml" in d.get("data", {}))["data"]["nimgate.toml"])


def seconds(text: str) -> float:
    """A nimgate duration ("250ms", "5s", "1m 30s") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == re.sub(r"\s", "", text), text
    return sum(float(n) * units[u] for n, u in parts)


def _uses_ngc_image(spec) -> bool:
    return any(str(c.get("image", "")).startswith("nvcr.io/") for c in containers(spec))


def _secret_refs(spec) -> set[str]:
    """Secrets a pod's containers can read: volumes (secret, projected) and env."""
    refs = set()
    for v in spec.get("volumes") or []:
        if "secret" in v:
            refs.add(v["secret"].get("secretName"))
        for src in (v.get("projected") or {}).get("sources") or []:
            if "secret" in src:
                refs.add(src["secret"].get("name"))
    for c in containers(spec):
        for e in c.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                refs.add(ref.get("name"))
        for ef in c.get("envFrom") or []:
            if ef.get("secretRef"):
                refs.add(ef["secretRef"].get("name"))
    return refs


def test_image_pull_secret_for_nvcr_images_only_used_by_the_kubelet():
    for o in OVERLAYS:
        for d in rendered(o):
            spec = pod_spec(d)
            if spec is None:
                continue
            pulls = [s.get("name") for s in spec.get("imagePullSecrets") or []]
            if _uses_ngc_image(spec):
                assert NGC_PULL_SECRET in pulls, f"{o}: {name_of(d)} pulls from nvcr.io " \
                    f"without imagePullSecrets {NGC_PULL_SECRET}"
            else:
                assert NGC_PULL_SECRET not in pulls, f"{o}: {name_of(d)} needs no NGC pull secret"
            assert NGC_PULL_SECRET not in _secret_refs(spec), \
                f"{o}: {name_of(d)} exposes the pull secret to a container"


def _job(docs, name):
    return next(d for d in docs if d.get("kind") == "Job" and d["metadata"]["name"] == name)


def _env_ref(c, var):
    e = next(e for e in c.get("env") or [] if e["name"] == var)
    return e.get("value") or (e.get("valueFrom") or {}).get("configMapKeyRef", {}).get("name")


def _claim_at(spec, c, path):
    vols = {v["name"]: v for v in spec.get("volumes") or []}
    m = mount_for(c, path)
    assert m and m["mountPath"] == path, f"{c['name']}: nothing mounted at {path}"
    return (vols[m["name"]].get("persistentVolumeClaim") or {}).get("claimName")


def test_model_download_job_has_the_ngc_key_and_the_serving_nim_none():
    for o in OVERLAYS:
        docs = rendered(o)
        job = _job(docs, "nim-model-download")
        spec = pod_spec(job)
        assert spec["restartPolicy"] == "Never" and job["spec"].get("ttlSecondsAfterFinished")
        assert job["spec"].get("activeDeadlineSeconds") and job["spec"]["backoffLimit"] <= 5
        assert spec["serviceAccountName"] == "nim-model-download"
        dl = _container(spec, "download")
        script = "\n".join(map(str, [*dl.get("command", []), *dl.get("args", [])]))
        assert 'export NGC_API_KEY="$(cat /vault/secrets/ngc-key)"' in script
        assert 'download-to-cache --profile "$NIM_MODEL_PROFILE"' in script
        assert ".nimgate-model-ready" in script
        assert _env_ref(dl, "NIM_CACHE_PATH") == "/opt/nim/.cache"
        profile_cm = _env_ref(dl, "NIM_MODEL_PROFILE")
        assert profile_cm.startswith("nim-model-profile"), profile_cm
        claim = _claim_at(spec, dl, "/opt/nim/.cache")
        # The key: rendered by a Vault Agent init container that exits, into memory.
        agent = _container(spec, "vault-agent")
        assert agent in spec["initContainers"] and agent.get("restartPolicy") is None
        cms = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ConfigMap"}
        agent_cfg = next(cms[v["configMap"]["name"]]["data"]["agent.hcl"]
                         for v in spec["volumes"] if "configMap" in v
                         and "agent.hcl" in cms[v["configMap"]["name"]].get("data", {}))
        assert re.search(r"^exit_after_auth\s*=\s*true", agent_cfg, re.M)
        assert 'destination          = "/vault/secrets/ngc-key"' in agent_cfg
        assert "sink" not in re.sub(r"#.*", "", agent_cfg), "the agent must not write its token"
        assert _file_on_memory(dl, {v["name"]: v for v in spec["volumes"]},
                               "/vault/secrets/ngc-key", "download", "NGC key") == []
        # The serving NIM: same profile and cache, no NGC key, no Vault identity.
        serving = [d for d in docs if d.get("kind") == "Deployment"
                   and any(c["name"] == "nim" for c in containers(pod_spec(d)))]
        assert len(serving) == 1, serving
        sspec = pod_spec(serving[0])
        nim = _container(sspec, "nim")
        assert _env_ref(nim, "NIM_MODEL_PROFILE") == profile_cm
        assert _claim_at(sspec, nim, "/opt/nim/.cache") == claim
        wait = _container(sspec, "wait-for-model-cache")
        assert wait in sspec["initContainers"] and _env_ref(wait, "NIM_MODEL_PROFILE") == profile_cm
        assert "NGC" not in yaml.safe_dump(serving[0]), "the serving pod must not see an NGC key"
        assert sspec.get("serviceAccountName") != "nim-model-download"
        # Only the Job's pods may reach out (NGC over 443).
        np = next(d for d in docs if d.get("kind") == "NetworkPolicy"
                  and d["metadata"]["name"] == "nim-model-download")
        assert np["spec"]["podSelector"]["matchLabels"] == \
            job["spec"]["template"]["metadata"]["labels"]
        assert not np["spec"].get("ingress")
        assert {p["port"] for r in np["spec"]["egress"] for p in r["ports"]} == {53, 8200, 443}


def test_only_the_download_job_reads_a_secret_into_an_env_var():
    for o in OVERLAYS:
        for d in rendered(o):
            spec = pod_spec(d)
            for c in containers(spec or {}):
                text = " ".join(map(str, [*(c.get("command") or []), *(c.get("args") or [])]))
                if "NGC_API_KEY" in text:
                    assert (name_of(d), c["name"]) == ("Job/nim-model-download", "download")


def test_shutdown_order_and_grace_periods():
    margin = 5
    for o in OVERLAYS:
        docs = rendered(o)
        server = _nimgate_config(docs).get("server", {})
        assert seconds(server.get("drain_delay", "0s")) == 5, \
            f"{o}: drain_delay must be 5s (endpoint removal before the listener closes)"
        drain = seconds(server.get("drain_delay", "0s")) + seconds(
            server.get("shutdown_grace", "30s"))
        spec = pod_spec(_deployment(docs, "nimgate"))
        assert any(c["name"] == "nimgate" for c in spec["containers"]), \
            "nimgate must be a regular container (a native sidecar is stopped after the NIM)"
        gw = _container(spec, "nimgate")
        assert not (gw.get("lifecycle") or {}).get("preStop"), \
            "nimgate's image has no shell: drain_delay does what a preStop sleep would"
        grace = spec["terminationGracePeriodSeconds"]
        assert grace >= drain + margin, f"{o}: grace {grace}s < drain {drain}s + {margin}s"
        if o in ("standalone", "fleet"):
            continue
        # Sidecar pods: the NIM must outlive nimgate's drain.
        nim = _container(spec, "nim")
        cmd = nim["lifecycle"]["preStop"]["exec"]["command"]
        assert cmd[0] == "sleep" and len(cmd) == 2, cmd
        hold = int(cmd[1])
        assert hold >= drain + margin, f"{o}: NIM preStop {hold}s < nimgate drain {drain}s + margin"
        assert grace >= hold + 10, f"{o}: grace {grace}s leaves the NIM no time after preStop"


def test_vault_ca_volume():
    for o in OVERLAYS:
        docs = rendered(o)
        cms = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ConfigMap"}
        cfg = _nimgate_config(docs)
        for d in docs:
            spec = pod_spec(d)
            if spec is None:
                continue
            vols = {v["name"]: v for v in spec.get("volumes") or []}
            for c in containers(spec):
                wants = []
                if c["name"] == "nimgate" and cfg["secret"]["source"] == "vault":
                    wants.append(cfg["secret"]["ca_file"])
                if is_vault_agent(c):
                    agent_cm = [cms[vols[m["name"]]["configMap"]["name"]]["data"]["agent.hcl"]
                                for m in c["volumeMounts"] if "configMap" in vols[m["name"]]
                                and "agent.hcl" in cms[vols[m["name"]]["configMap"]["name"]]
                                .get("data", {})]
                    wants += re.findall(r'^\s*ca_cert\s*=\s*"([^"]+)"', agent_cm[0], re.M)
                    assert wants, f"{o}: {name_of(d)} {c['name']} has no ca_cert"
                for path in wants:
                    m = mount_for(c, path)
                    assert m and m.get("readOnly"), f"{o}: {c['name']}: {path} not mounted ro"
                    ref = (vols[m["name"]].get("configMap") or {}).get("name", "")
                    assert ref.startswith("vault-ca") and \
                        Path(path).name in cms[ref]["data"], f"{o}: {c['name']}: {path} {ref}"


def test_servicemonitor_component():
    comp = K8S / "components" / "servicemonitor"
    kust = load_docs(comp / "kustomization.yaml")[0]
    assert kust["kind"] == "Component"
    docs = [d for f in kust["resources"] for d in load_docs(comp / f)]
    sm = next(d for d in docs if d["kind"] == "ServiceMonitor")
    # Minimal schema of monitoring.coreos.com/v1 ServiceMonitor (the CRD is not installed in
    # kubernetes-validate's schemas): the fields Prometheus Operator requires and their types.
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert isinstance(sm["metadata"]["name"], str)
    spec = sm["spec"]
    assert set(spec) <= {"endpoints", "selector", "namespaceSelector", "jobLabel",
                         "targetLabels", "podTargetLabels", "sampleLimit"}, set(spec)
    assert isinstance(spec["selector"]["matchLabels"], dict)
    assert isinstance(spec["endpoints"], list) and spec["endpoints"]
    for ep in spec["endpoints"]:
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme",
                           "honorLabels", "relabelings", "metricRelabelings"}, set(ep)
        for k in ("interval", "scrapeTimeout"):
            assert re.fullmatch(r"\d+(ms|s|m|h)", ep.get(k, "30s")), ep
    assert spec["namespaceSelector"]["matchNames"] == ["nimgate"]
    # It selects exactly the metrics Service, whose port reaches the pods' admin port.
    svc = next(d for d in docs if d["kind"] == "Service")
    labels = svc["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items())
    base_svc = load_docs(K8S / "base" / "service.yaml")[0]["metadata"]["labels"]
    assert not all(base_svc.get(k) == v for k, v in spec["selector"]["matchLabels"].items()), \
        "the ServiceMonitor must not select the client Service"
    assert svc["spec"]["clusterIP"] == "None"
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert [ep["port"] for ep in spec["endpoints"]] == ["admin"] and ports["admin"]["port"] == 9090
    for o in OVERLAYS:
        pspec = pod_spec(_deployment(rendered(o), "nimgate"))
        gw = _container(pspec, "nimgate")
        assert {p["name"]: p["containerPort"] for p in gw["ports"]}["admin"] == 9090
        assert all(pspec.get("containers") and
                   _deployment(rendered(o), "nimgate")["spec"]["template"]["metadata"]
                   ["labels"].get(k) == v for k, v in svc["spec"]["selector"].items())


def _fleet():
    """The rendered fleet overlay: (docs, nimgate config, Valkey Deployment, its pod spec)."""
    docs = rendered("fleet")
    redis = [d for d in docs if pod_spec(d) and any(is_redis(c) for c in containers(pod_spec(d)))]
    assert len(redis) == 1, [name_of(d) for d in redis]
    return docs, _nimgate_config(docs), redis[0], pod_spec(redis[0])


def _configmap_data(docs, spec, volume):
    vols = {v["name"]: v for v in spec["volumes"]}
    name = vols[volume]["configMap"]["name"]
    return next(d for d in docs if d.get("kind") == "ConfigMap"
                and d["metadata"]["name"] == name)["data"]


def _valkey_conf(docs, spec) -> dict[str, str]:
    server = next(c for c in spec["containers"] if is_redis(c))
    assert server["command"][0] == "valkey-server" and len(server["command"]) == 2, \
        f"the server takes its config file and nothing else: {server['command']}"
    assert not server.get("args")
    conf_path = server["command"][1]
    m = mount_for(server, conf_path)
    text = _configmap_data(docs, spec, m["name"])[Path(conf_path).name]
    conf = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.strip().partition(" ")
            conf[k.lower()] = v.strip()
    return conf


def test_fleet_redis_password_reaches_valkey_and_nimgate_as_files_only():
    docs, cfg, redis, spec = _fleet()
    rl = cfg["ratelimit"]
    assert rl["backend"] == "redis" and "@" not in rl["redis_url"]
    # nimgate: the password file is a Secret source of its projected config volume.
    gw_spec = pod_spec(_deployment(docs, "nimgate"))
    gw = _container(gw_spec, "nimgate")
    m = mount_for(gw, rl["redis_password_file"])
    vol = {v["name"]: v for v in gw_spec["volumes"]}[m["name"]]
    rel = str(Path(rl["redis_password_file"]).relative_to(m["mountPath"]))
    srcs = [s["secret"] for s in vol["projected"]["sources"] if "secret" in s
            and any(i["path"] == rel for i in s["secret"].get("items") or [])]
    assert len(srcs) == 1 and m.get("readOnly"), (vol, rel)
    secret = srcs[0]["name"]
    item = next(i for i in srcs[0]["items"] if i["path"] == rel)
    assert item["mode"] & 0o007 == 0, "the password file must not be world-readable"
    # Valkey: the same Secret and key, as a Secret volume, read by the init container only.
    vols = {v["name"]: v for v in spec["volumes"]}
    pw_vols = [n for n, v in vols.items() if (v.get("secret") or {}).get("secretName") == secret]
    assert len(pw_vols) == 1, vols
    assert vols[pw_vols[0]]["secret"]["items"][0]["key"] == item["key"]
    readers = [c for c in containers(spec)
               if any(x["name"] == pw_vols[0] for x in c.get("volumeMounts") or [])]
    assert [c["name"] for c in readers] == ["acl"] and readers[0] in spec["initContainers"]
    acl = readers[0]
    assert acl["command"] == ["/bin/sh", "/etc/valkey/conf/make-acl.sh"], acl["command"]
    pw_path, acl_path, prefix = acl["args"]
    assert mount_for(acl, pw_path)["name"] == pw_vols[0] and mount_for(acl, pw_path)["readOnly"]
    assert prefix == rl["key_prefix"], "the ACL must allow exactly nimgate's key prefix"
    # The ACL file: on tmpfs, written by the init container, read-only for the server.
    acl_vol = vols[mount_for(acl, acl_path)["name"]]
    assert acl_vol["emptyDir"]["medium"] == "Memory"
    server = next(c for c in spec["containers"] if is_redis(c))
    sm = mount_for(server, acl_path)
    assert sm and sm["name"] == mount_for(acl, acl_path)["name"] and sm["readOnly"]
    conf = _valkey_conf(docs, spec)
    assert conf["aclfile"] == acl_path, conf
    assert not {"requirepass", "masterauth", "user"} & set(conf), conf
    # The script hashes what it reads and writes only the hash.
    script = _configmap_data(docs, spec, mount_for(acl, acl["command"][1])["name"])["make-acl.sh"]
    code = "\n".join(line.split("#", 1)[0] if not line.lstrip().startswith("printf") else line
                     for line in script.splitlines())
    assert '<"$secret" | sha256sum' in code and "user default on #%s" in code, script
    assert "$secret" not in code.replace('<"$secret"', "").replace("echo \"make-acl: $secret", ""), \
        "make-acl.sh may only redirect the password file into sha256sum"
    # Nowhere an env var or argument with it (the generic env checks, on this overlay).
    for d in docs:
        for c in containers(pod_spec(d) or {}):
            assert not c.get("envFrom") and all("valueFrom" not in e or "secretKeyRef" not in
                                                e["valueFrom"] for e in c.get("env") or []), c
            for arg in [*(c.get("command") or []), *(c.get("args") or [])]:
                assert not REDIS_SECRET_ARG.search(str(arg)), (c["name"], arg)


def test_fleet_valkey_is_one_hardened_replica_without_persistence():
    docs, _, redis, spec = _fleet()
    assert redis["kind"] == "Deployment" and redis["spec"]["replicas"] == 1
    assert redis["spec"]["strategy"]["type"] == "Recreate", \
        "two Valkeys behind the Service would split each client's state"
    assert not any("persistentVolumeClaim" in v or "ephemeral" in v or "hostPath" in v
                   for v in spec["volumes"]), "limits are soft state: no disk"
    conf = _valkey_conf(docs, spec)
    assert conf["save"] == '""' and conf["appendonly"] == "no", conf
    assert conf["maxmemory-policy"] == "noeviction", "evicting would reset a daily budget"
    assert conf["port"] == "6379" and conf["databases"] == "1"
    assert spec["automountServiceAccountToken"] is False
    sa = next(d for d in docs if d.get("kind") == "ServiceAccount"
              and d["metadata"]["name"] == spec["serviceAccountName"])
    assert sa["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for c in containers(spec):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsNonRoot"] is True
        assert sc["runAsUser"] >= 10000 and c["image"].split(":")[-1] not in ("", "latest")
        assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]
    server = next(c for c in spec["containers"] if is_redis(c))
    assert server["livenessProbe"] and server["readinessProbe"]
    mem = server["resources"]["limits"]["memory"]
    assert mem.endswith("Mi") and int(mem[:-2]) > int(conf["maxmemory"].rstrip("mb")), \
        "the memory limit must leave room above maxmemory"


def test_fleet_redis_networkpolicy_admits_only_nimgate():
    docs, cfg, redis, spec = _fleet()
    assert redis_networkpolicy_violations(docs) == []
    labels = redis["spec"]["template"]["metadata"]["labels"]
    nps = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    mine = [n for n in nps if selects(n["spec"]["podSelector"], labels)]
    # The namespace default deny and the Valkey policy; one ingress rule in all.
    assert sorted(n["metadata"]["name"] for n in mine) == ["default-deny-all", "nimgate-redis"]
    rules = [r for n in mine for r in n["spec"].get("ingress") or []]
    assert rules == [{"from": NIMGATE_ONLY, "ports": [{"protocol": "TCP", "port": 6379}]}], rules
    # nimgate may reach it: egress to the Valkey pods on 6379.
    gw_np = next(n for n in nps if n["metadata"]["name"] == "nimgate")
    assert {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "nimgate-redis"}}}],
            "ports": [{"protocol": "TCP", "port": 6379}]} in gw_np["spec"]["egress"]
    assert selects({"matchLabels": {"app.kubernetes.io/name": "nimgate-redis"}}, labels)
    # redis_url names the Service in front of exactly these pods, on the server's port.
    m = re.fullmatch(r"redis://([a-z0-9-]+)\.([a-z0-9-]+)\.svc:(\d+)/0", cfg["ratelimit"]["redis_url"])
    assert m, cfg["ratelimit"]["redis_url"]
    svc = next(d for d in docs if d.get("kind") == "Service" and d["metadata"]["name"] == m[1])
    assert m[2] == "nimgate" and selects({"matchLabels": svc["spec"]["selector"]}, labels)
    port = next(p for p in svc["spec"]["ports"] if p["port"] == int(m[3]))
    server = next(c for c in spec["containers"] if is_redis(c))
    assert {p["name"]: p["containerPort"] for p in server["ports"]}[port["targetPort"]] == 6379


def fixture_files() -> list[Path]:
    return sorted(FIXTURES.glob("*.yaml"))


def check_fixture(path: Path) -> None:
    expect = re.findall(r"^# expect: (.+)$", path.read_text(encoding="utf-8"), re.M)
    assert expect, f"{path.name}: no '# expect:' line"
    found = all_violations(load_docs(path))
    for e in expect:
        assert any(e in v for v in found), f"{path.name}: expected a violation with {e!r}, " \
            f"got {found or 'none'}"


def test_fixtures_present():
    assert len(fixture_files()) >= 5, "negative fixtures missing"


def test_fixtures_are_rejected():
    for f in fixture_files():
        check_fixture(f)


# --------------------------------------------------------------------------------------------
# Plain runner


def main() -> int:
    tests = [(n, f) for n, f in globals().items() if n.startswith("test_") and callable(f)]
    # One result line per negative fixture, so each shows up on its own.
    tests = [t for t in tests if t[0] != "test_fixtures_are_rejected"]
    tests += [(f"fixture {p.name} rejected", (lambda p=p: check_fixture(p)))
              for p in fixture_files()]
    passed = failed = 0
    for name, fn in tests:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - report every failure, keep going
            failed += 1
            here = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == __file__]
            at = f" (line {here[-1].lineno}: {here[-1].line})" if here else ""
            print(f"FAIL {name}: {type(e).__name__}: {e}{at}")
        else:
            passed += 1
            print(f"ok   {name}")
    print(f"deploy: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
