#!/usr/bin/env python3
"""Structural tests of terraform/ (the Custody module) and terraform/examples/complete.

They read the HCL with python-hcl2 and assert the invariants a security review
relies on, offline (no provider, no terraform init):

  - Secret Manager access only per secret (google_secret_manager_secret_iam_member),
    never project-wide, never authoritative IAM; signing keys (recording.signing_key,
    identity.signing_key) created empty or referenced, never with a value in state,
    and the config may name only those as keys;
  - roles/cloudtrace.agent only with google_trace_export, which must match the
    OTLP endpoint; GOOGLE_CLOUD_PROJECT and the OTEL_* variables owned by the module;
  - the recordings bucket: objectCreator + objectViewer only (no delete, no admin),
    uniform access, public access prevention enforced, versioning, retention policy;
  - the Cloud Run service: startup probe on /readyz, liveness probe on /healthz,
    timeout 3600s, CPU always allocated, egress PRIVATE_RANGES_ONLY by default,
    config mounted from Secret Manager at /etc/custody;
  - every variable has a description and a type;
  - the example's custody.toml uses only the documented config keys and holds no
    plain secret.

Run: python3 tests/terraform/test_module.py   (needs python-hcl2 >= 7)
Set CUSTODY_BIN=path/to/custody to also run `custody config check` on the example.
"""

import json
import os
import re
import subprocess
import sys
import tomllib
import unittest
from pathlib import Path

try:
    import hcl2
    from hcl2 import SerializationOptions
except ImportError:  # pragma: no cover - environment problem, not a test failure
    sys.exit(
        "python-hcl2 >= 7 is required (bash scripts/test-terraform.sh installs it in a venv)"
    )

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "terraform"
EXAMPLE_DIR = MODULE_DIR / "examples" / "complete"
EXAMPLE_CONFIG = EXAMPLE_DIR / "custody.toml"

_META_KEYS = {"__is_block__", "__comments__", "__inline_comments__", "__start_line__", "__end_line__"}


def _clean(node):
    if isinstance(node, dict):
        return {k: _clean(v) for k, v in node.items() if k not in _META_KEYS}
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return node


def load_tf_dir(directory):
    """Parse every *.tf in one directory (not recursive) into one merged dict.

    Returns {"resource": {type: {name: body}}, "data": {...}, "variable": {name: body},
    "output": {...}, "module": {...}, "locals": {...}, "terraform": [...], "files": {...}}.
    """
    options = SerializationOptions(strip_string_quotes=True, with_comments=False)
    merged = {"resource": {}, "data": {}, "variable": {}, "output": {}, "module": {},
              "locals": {}, "terraform": [], "provider": [], "files": {}}
    for path in sorted(Path(directory).glob("*.tf")):
        text = path.read_text()
        merged["files"][path.name] = text
        parsed = _clean(hcl2.loads(text, serialization_options=options))
        for kind in ("resource", "data"):
            for entry in parsed.get(kind, []):
                for rtype, named in entry.items():
                    for name, body in named.items():
                        merged[kind].setdefault(rtype, {})[name] = body
        for kind in ("variable", "output", "module"):
            for entry in parsed.get(kind, []):
                merged[kind].update(entry)
        for entry in parsed.get("locals", []):
            merged["locals"].update(entry)
        merged["terraform"].extend(parsed.get("terraform", []))
        merged["provider"].extend(parsed.get("provider", []))
    return merged


def block(body, name):
    """The single nested block `name` of a body (hcl2 gives blocks as lists)."""
    value = body.get(name)
    if isinstance(value, list):
        if len(value) != 1:
            raise AssertionError(f"expected one {name} block, found {len(value)}")
        return value[0]
    if value is None:
        raise AssertionError(f"missing {name} block")
    return value


def dynamic_blocks(body):
    """{label: dynamic block body} of a body."""
    out = {}
    for entry in body.get("dynamic", []):
        out.update(entry)
    return out


def all_strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield from all_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from all_strings(v)


def hcl_regexes(expression):
    """The patterns of regex()/regexall() calls in an expression, HCL escapes undone."""
    return [json.loads(f'"{lit}"') for lit in re.findall(r'regex(?:all)?\(\s*"((?:[^"\\]|\\.)*)"', expression)]


def roles_in(expression):
    return set(re.findall(r"roles/[A-Za-z0-9_.]+", expression))


def module_signing_keys(text, refs):
    """The module's signing key locals, evaluated in Python with the module's own
    regexes on a config text; refs is the set of PROJECT/SECRET it may name.

    Returns {"recording": [...], "identity": [...], "foreign_recording": [...],
    "foreign_identity": [...]} as the locals of the same names in main.tf.
    """
    locals_ = MODULE["locals"]
    (key,) = set(hcl_regexes(locals_["config_signing_keys"]))
    (ref,) = hcl_regexes(locals_["foreign_signing_keys"])
    (table,) = hcl_regexes(locals_["config_tables"])
    tables = {t: "\n".join(re.findall(table.replace("${t}", t), text)) for t in ("recording", "identity")}
    foreign = [k for k in re.findall(key, text)
               if not (re.match(ref, k) and "/".join(re.match(ref, k).groups()) in refs)]
    identity = re.findall(key, tables["identity"])
    return {
        "recording": re.findall(key, tables["recording"]),
        "identity": identity,
        "foreign_recording": [k for k in foreign if k not in identity],
        "foreign_identity": [k for k in foreign if k in identity],
    }


MODULE = load_tf_dir(MODULE_DIR)
EXAMPLE = load_tf_dir(EXAMPLE_DIR)
ALL = {"module": MODULE, "example": EXAMPLE}


def resources_of(prefix):
    for where, tf in ALL.items():
        for rtype, named in tf["resource"].items():
            if rtype.startswith(prefix):
                for name, body in named.items():
                    yield where, rtype, name, body


class SecretAccessTest(unittest.TestCase):
    def test_no_project_wide_secret_manager_role(self):
        for prefix in ("google_project_iam", "google_folder_iam", "google_organization_iam"):
            for where, rtype, name, body in resources_of(prefix):
                text = json.dumps(body)
                self.assertNotIn("secretmanager", text, f"{where}: {rtype}.{name} grants Secret Manager beyond one secret")

    def test_secret_roles_only_on_listed_secrets(self):
        for where, tf in ALL.items():
            for rtype, named in tf["resource"].items():
                for name, body in named.items():
                    if "secretmanager" in json.dumps(body.get("role", "")):
                        self.assertEqual(rtype, "google_secret_manager_secret_iam_member", f"{where}: {rtype}.{name}")
                        self.assertEqual(body["role"], "roles/secretmanager.secretAccessor", f"{where}: {rtype}.{name}")
        for rtype in MODULE["resource"]:
            self.assertNotRegex(rtype, r"^google_secret_manager_secret_iam_(binding|policy)$")

    def test_upstream_secrets_come_from_the_variable(self):
        upstream = MODULE["resource"]["google_secret_manager_secret_iam_member"]["upstream"]
        self.assertEqual(upstream["for_each"], "${local.upstream_secrets}")
        self.assertIn("var.upstream_secret_ids", MODULE["locals"]["upstream_secrets"])
        self.assertEqual(upstream["member"], "${local.gateway_member}")

    def test_no_authoritative_iam_anywhere(self):
        for where, tf in ALL.items():
            for rtype in tf["resource"]:
                self.assertNotRegex(rtype, r"_iam_(binding|policy)$", f"{where}: authoritative IAM {rtype} would clobber other grants")

    def test_gateway_project_roles_are_trace_and_logging_only(self):
        project_iam = MODULE["resource"]["google_project_iam_member"]
        self.assertEqual(set(project_iam), {"gateway", "cloud_sql"})
        self.assertEqual(project_iam["gateway"]["for_each"], "${local.gateway_project_roles}")
        self.assertEqual(roles_in(MODULE["locals"]["gateway_project_roles"]),
                         {"roles/cloudtrace.agent", "roles/logging.logWriter"})

    def test_trace_role_only_with_google_trace_export(self):
        roles = MODULE["locals"]["gateway_project_roles"]
        self.assertIn('var.google_trace_export ? ["roles/cloudtrace.agent"] : []', roles)
        self.assertEqual(roles.count("roles/cloudtrace.agent"), 1)
        self.assertIs(MODULE["variable"]["google_trace_export"]["default"], False)
        self.assertIn(MODULE["variable"]["google_trace_export"]["type"], ("bool", "${bool}"))

    def test_module_creates_no_secret_values_but_the_config(self):
        versions = MODULE["resource"].get("google_secret_manager_secret_version", {})
        self.assertEqual(set(versions), {"config"})
        self.assertEqual(versions["config"]["secret_data"], "${var.config_toml}")
        self.assertNotIn("google_secret_manager_secret_version", EXAMPLE["resource"])
        # Only the gateway's IAM user, which has no password to land in state.
        for name, user in EXAMPLE["resource"].get("google_sql_user", {}).items():
            self.assertEqual(user["type"], "CLOUD_IAM_SERVICE_ACCOUNT", name)
            self.assertNotIn("password", user, name)

    def test_cloud_sql_roles_only_for_listed_instances(self):
        grants = MODULE["resource"]["google_project_iam_member"]["cloud_sql"]
        self.assertEqual(grants["for_each"], "${local.cloud_sql_grants}")
        self.assertEqual(grants["member"], "${local.gateway_member}")
        roles = MODULE["locals"]["cloud_sql_roles"]
        self.assertEqual(roles_in(roles), {"roles/cloudsql.client", "roles/cloudsql.instanceUser"})
        self.assertIn('var.cloud_sql_iam_login ? ["roles/cloudsql.instanceUser"] : []', roles)
        self.assertIs(MODULE["variable"]["cloud_sql_iam_login"]["default"], False)

    def test_signing_key_secrets_exist_and_are_granted(self):
        secrets = MODULE["resource"]["google_secret_manager_secret"]
        self.assertIn("signing_key", secrets)
        self.assertEqual(secrets["signing_key"]["for_each"], "${toset(var.signing_keys)}")
        grant = MODULE["resource"]["google_secret_manager_secret_iam_member"]["signing_key"]
        self.assertEqual(grant["for_each"], "${google_secret_manager_secret.signing_key}")
        self.assertEqual(grant["role"], "roles/secretmanager.secretAccessor")
        self.assertEqual(grant["member"], "${local.gateway_member}")

    def test_existing_signing_key_secrets_are_granted(self):
        grant = MODULE["resource"]["google_secret_manager_secret_iam_member"]["signing_key_existing"]
        self.assertEqual(grant["for_each"], "${local.existing_signing_keys}")
        self.assertEqual(grant["role"], "roles/secretmanager.secretAccessor")
        self.assertEqual(grant["member"], "${local.gateway_member}")
        self.assertIn("var.signing_key_secret_ids", MODULE["locals"]["existing_signing_keys"])
        self.assertEqual(MODULE["variable"]["signing_key_secret_ids"]["default"], [])

    def test_signing_key_refs_are_what_the_config_may_name(self):
        refs = MODULE["locals"]["signing_key_refs"]
        self.assertIn("var.signing_keys", refs)
        self.assertIn("local.existing_signing_keys", refs)
        self.assertIn("local.signing_key_refs", MODULE["locals"]["granted_secret_refs"])
        self.assertIn("local.signing_key_refs", MODULE["locals"]["foreign_signing_keys"])
        (pattern,) = hcl_regexes(MODULE["locals"]["foreign_signing_keys"])
        self.assertEqual(re.match(pattern, "sm://p-1/custody-signing-key").groups(), ("p-1", "custody-signing-key"))
        self.assertEqual(re.match(pattern, "sm://p-1/custody-signing-key#3").groups(), ("p-1", "custody-signing-key"))
        for bad in ("env:KEY", "file:/k.pem", "sm://p-1", "-----BEGIN PRIVATE KEY-----"):
            self.assertIsNone(re.match(pattern, bad), bad)
        self.assertIs(MODULE["variable"]["require_signing_key"]["default"], True)

    def test_identity_signing_key_must_be_a_signing_key_secret(self):
        locals_ = MODULE["locals"]
        self.assertIn('local.config_tables["identity"]', locals_["identity_signing_keys"])
        self.assertIn('local.config_tables["recording"]', locals_["recording_signing_keys"])
        for name in ("foreign_identity_signing_keys", "foreign_recording_signing_keys"):
            self.assertIn("local.foreign_signing_keys", locals_[name])
        refs = {"p-1/custody-signing-key", "p-1/custody-delegation-key"}
        head = '[identity]\naudiences = ["https://g"]\n'
        tail = ('[[identity.issuers]]\nissuer = "https://accounts.google.com"\n\n'
                '[recording]  # manifests\nstore = "gs://b/r"\nsigning_key = "sm://p-1/custody-signing-key"\n')
        # Both keys granted, the identity one pinned.
        ok = module_signing_keys(head + 'signing_key = "sm://p-1/custody-delegation-key#3"\n' + tail, refs)
        self.assertEqual(ok["identity"], ["sm://p-1/custody-delegation-key#3"])
        self.assertEqual(ok["recording"], ["sm://p-1/custody-signing-key"])
        self.assertEqual(ok["foreign_identity"] + ok["foreign_recording"], [])
        # No identity key: delegation off, nothing to check.
        off = module_signing_keys(head + tail, refs)
        self.assertEqual((off["identity"], off["foreign_identity"]), ([], []))
        # An upstream secret, an env: reference or another project's secret is refused as the identity key...
        for bad in ("sm://p-1/pg-prod-password", "env:DELEGATION_KEY", "sm://other/custody-delegation-key"):
            got = module_signing_keys(head + f'signing_key = "{bad}"\n' + tail, refs)
            self.assertEqual(got["foreign_identity"], [bad])
            self.assertEqual(got["foreign_recording"], [], "the recording check is not blamed")
        # ...and the identity key alone does not satisfy require_signing_key.
        only = module_signing_keys(head + 'signing_key = "sm://p-1/custody-delegation-key"\n'
                                   + '[recording]\nstore = "gs://b/r"\n', refs)
        self.assertEqual(only["recording"], [])
        # A foreign recording key is the recording check's.
        rec = module_signing_keys(head + tail.replace("custody-signing-key", "pg-prod-password"), refs)
        self.assertEqual((rec["foreign_recording"], rec["foreign_identity"]), (["sm://p-1/pg-prod-password"], []))

    def test_service_waits_for_every_secret_grant(self):
        service = MODULE["resource"]["google_cloud_run_v2_service"]["gateway"]
        for grant in ("config", "signing_key", "signing_key_existing", "upstream"):
            self.assertIn(f"${{google_secret_manager_secret_iam_member.{grant}}}", service["depends_on"])


class BucketTest(unittest.TestCase):
    def setUp(self):
        self.bucket = MODULE["resource"]["google_storage_bucket"]["recordings"]

    def test_public_access_prevention_enforced(self):
        self.assertEqual(self.bucket["public_access_prevention"], "enforced")

    def test_uniform_bucket_level_access(self):
        self.assertIs(self.bucket["uniform_bucket_level_access"], True)

    def test_versioning(self):
        self.assertEqual(block(self.bucket, "versioning")["enabled"], "${var.recordings_versioning}")
        self.assertIs(MODULE["variable"]["recordings_versioning"]["default"], True)

    def test_retention_policy(self):
        policy = block(self.bucket, "retention_policy")
        self.assertIn("var.recordings_retention_days", policy["retention_period"])
        self.assertIn("86400", policy["retention_period"])
        self.assertEqual(policy["is_locked"], "${var.recordings_retention_locked}")
        days = MODULE["variable"]["recordings_retention_days"]
        self.assertGreaterEqual(days["default"], 1)
        self.assertIn("validation", days)
        self.assertIs(MODULE["variable"]["recordings_retention_locked"]["default"], False,
                      "Bucket Lock is irreversible: it must be opted into")

    def test_never_force_destroyed(self):
        self.assertIs(self.bucket.get("force_destroy", False), False)

    def test_lifecycle_to_colder_storage(self):
        rule = dynamic_blocks(self.bucket)["lifecycle_rule"]
        self.assertEqual(rule["for_each"], "${var.recordings_storage_class_transitions}")
        action = block(block(rule, "content"), "action")
        self.assertEqual(action["type"], "SetStorageClass")
        classes = {t["storage_class"] for t in MODULE["variable"]["recordings_storage_class_transitions"]["default"]}
        self.assertTrue(classes <= {"NEARLINE", "COLDLINE", "ARCHIVE"} and classes)

    def test_optional_cmek(self):
        enc = dynamic_blocks(self.bucket)["encryption"]
        self.assertIn("var.recordings_kms_key_name", enc["for_each"])
        self.assertIsNone(MODULE["variable"]["recordings_kms_key_name"]["default"])

    def test_gateway_can_create_and_read_only(self):
        iam = MODULE["resource"]["google_storage_bucket_iam_member"]
        self.assertEqual(set(iam), {"recordings"})
        self.assertEqual(roles_in(iam["recordings"]["for_each"]),
                         {"roles/storage.objectCreator", "roles/storage.objectViewer"})
        self.assertEqual(iam["recordings"]["role"], "${each.value}")

    def test_no_storage_role_beyond_create_and_read(self):
        allowed = {"roles/storage.objectCreator", "roles/storage.objectViewer"}
        for where, tf in ALL.items():
            for rtype, named in tf["resource"].items():
                for name, body in named.items():
                    for s in all_strings(body):
                        for role in roles_in(s):
                            if role.startswith("roles/storage."):
                                self.assertIn(role, allowed, f"{where}: {rtype}.{name} grants {role}")
        for where, rtype, name, body in resources_of("google_project_iam"):
            self.assertNotIn("roles/storage.", json.dumps(body), f"{where}: project-wide storage role in {rtype}.{name}")


class CloudRunTest(unittest.TestCase):
    def setUp(self):
        self.service = MODULE["resource"]["google_cloud_run_v2_service"]["gateway"]
        self.template = block(self.service, "template")
        self.container = block(self.template, "containers")

    def test_timeout_is_an_hour(self):
        self.assertEqual(self.template["timeout"], "3600s")

    def test_startup_probe_on_readyz(self):
        probe = block(self.container, "startup_probe")
        self.assertEqual(block(probe, "http_get")["path"], "/readyz")

    def test_liveness_probe_on_healthz(self):
        probe = block(self.container, "liveness_probe")
        self.assertEqual(block(probe, "http_get")["path"], "/healthz")

    def test_cpu_always_allocated(self):
        self.assertIs(block(self.container, "resources")["cpu_idle"], False)

    def test_dedicated_service_account(self):
        self.assertEqual(self.template["service_account"], "${google_service_account.gateway.email}")

    def test_port_concurrency_scaling_ingress_are_variables(self):
        self.assertEqual(block(self.container, "ports")["container_port"], "${var.port}")
        self.assertEqual(MODULE["variable"]["port"]["default"], 8080)
        self.assertEqual(self.template["max_instance_request_concurrency"], "${var.concurrency}")
        scaling = block(self.template, "scaling")
        self.assertEqual(scaling["min_instance_count"], "${var.min_instances}")
        self.assertEqual(scaling["max_instance_count"], "${var.max_instances}")
        self.assertEqual(self.service["ingress"], "${var.ingress}")

    def test_egress_private_ranges_only_by_default(self):
        vpc = dynamic_blocks(self.template)["vpc_access"]
        content = block(vpc, "content")
        self.assertEqual(content["egress"], "${var.vpc_egress}")
        self.assertIn("network_interfaces", dynamic_blocks(content))
        self.assertEqual(MODULE["variable"]["vpc_egress"]["default"], "PRIVATE_RANGES_ONLY")

    def test_config_mounted_from_secret_manager(self):
        env = {e["name"]: e.get("value") for e in self.container["env"]}
        self.assertEqual(env["CUSTODY_CONFIG"], "/etc/custody/custody.toml")
        mount = block(self.container, "volume_mounts")
        self.assertEqual(mount["mount_path"], "/etc/custody")
        volume = block(self.template, "volumes")
        self.assertEqual(volume["name"], mount["name"])
        secret = block(volume, "secret")
        self.assertEqual(secret["secret"], "${google_secret_manager_secret.config.secret_id}")
        item = block(secret, "items")
        self.assertEqual(item["path"], "custody.toml")
        self.assertEqual(item["version"], "${google_secret_manager_secret_version.config.version}")

    def test_env_comes_from_local_env(self):
        env = dynamic_blocks(self.container)["env"]
        self.assertEqual(env["for_each"], "${local.env}")

    def test_env_wiring(self):
        env = MODULE["locals"]["env"]
        self.assertIn("GOOGLE_CLOUD_PROJECT = var.project_id", env)
        self.assertIn("OTEL_SERVICE_NAME = coalesce(var.otel_service_name, var.name)", env)
        self.assertIn("var.otlp_endpoint == null ? {} : {OTEL_EXPORTER_OTLP_ENDPOINT = var.otlp_endpoint}", env)
        self.assertIn("var.otlp_protocol == null ? {} : {OTEL_EXPORTER_OTLP_PROTOCOL = var.otlp_protocol}", env)
        self.assertIn("OTEL_RESOURCE_ATTRIBUTES", env)
        self.assertTrue(env.rstrip("}").rstrip(")").endswith("var.env"), "var.env merges last")
        # telemetry.googleapis.com files spans by gcp.project_id.
        self.assertIn('var.google_trace_export ? {"gcp.project_id" = var.project_id} : {}',
                      MODULE["locals"]["otel_resource_attributes"])
        for name in ("otlp_endpoint", "otlp_protocol", "otel_service_name"):
            self.assertIsNone(MODULE["variable"][name]["default"], name)

    def test_env_cannot_take_over_module_owned_variables(self):
        conditions = " ".join(v["condition"] for v in MODULE["variable"]["env"]["validation"])
        for owned in ("PORT", "CUSTODY_CONFIG", "GOOGLE_CLOUD_PROJECT", "OTEL_EXPORTER_OTLP_ENDPOINT",
                      "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
                      "STORAGE_EMULATOR_HOST"):
            self.assertIn(f'"{owned}"', conditions, owned)

    def test_google_endpoint_detection(self):
        (pattern,) = hcl_regexes(MODULE["locals"]["google_otlp_endpoint"])
        for google in ("https://telemetry.googleapis.com", "https://telemetry.googleapis.com/",
                       "https://telemetry.googleapis.com:443"):
            self.assertRegex(google, pattern)
        for other in ("http://localhost:4318", "http://127.0.0.1:4317", "https://otel.example.com",
                      "https://googleapis.com.evil.example", "http://telemetry.googleapis.com", ""):
            self.assertNotRegex(other, pattern)
        # The environment wins over the file, as in the gateway.
        self.assertTrue(MODULE["locals"]["otlp_endpoint"].startswith("${var.otlp_endpoint != null ? var.otlp_endpoint"))

    def test_invoker_iam_optional(self):
        self.assertEqual(self.service["invoker_iam_disabled"], "${var.invoker_iam_disabled}")
        self.assertIs(MODULE["variable"]["invoker_iam_disabled"]["default"], False)
        invoker = MODULE["resource"]["google_cloud_run_v2_service_iam_member"]["invoker"]
        self.assertEqual(invoker["role"], "roles/run.invoker")
        self.assertIn("var.invoker_iam_disabled", invoker["for_each"])

    def test_invokers_refuse_public_members(self):
        (pattern,) = hcl_regexes(block(MODULE["variable"]["invokers"], "validation")["condition"])
        for good in ("group:sre@example.com", "serviceAccount:deployer@p.iam.gserviceaccount.com", "user:a@b.c"):
            self.assertRegex(good, pattern)
        for bad in ("allUsers", "allAuthenticatedUsers", "sre@example.com"):
            self.assertNotRegex(bad, pattern)

    def test_image_rollouts_belong_to_cloud_build(self):
        lifecycle = block(self.service, "lifecycle")
        self.assertIn("${template[0].containers[0].image}", lifecycle["ignore_changes"])

    def test_preconditions_guard_the_config(self):
        conditions = " ".join(p["condition"] for p in block(self.service, "lifecycle")["precondition"])
        self.assertIn("local.ungranted_secret_refs", conditions)
        self.assertIn("local.foreign_stores", conditions)
        self.assertIn("local.config_store_endpoints", conditions)
        self.assertIn("local.foreign_recording_signing_keys", conditions)
        self.assertIn("local.recording_signing_keys", conditions)
        self.assertIn("var.require_signing_key", conditions)
        self.assertIn("length(local.foreign_identity_signing_keys) == 0", conditions)
        self.assertIn("var.google_trace_export == local.google_otlp_endpoint", conditions)


class VariablesTest(unittest.TestCase):
    def test_every_variable_has_description_and_type(self):
        for where, tf in ALL.items():
            self.assertTrue(tf["variable"], f"{where} declares no variable")
            for name, body in tf["variable"].items():
                self.assertTrue(str(body.get("description", "")).strip(), f"{where}: variable {name} has no description")
                self.assertIn("type", body, f"{where}: variable {name} has no type")

    def test_key_variables_are_validated(self):
        for name in ("project_id", "region", "name", "image", "config_toml", "ingress", "vpc_egress",
                     "invokers", "upstream_secret_ids", "recordings_bucket_name", "recordings_retention_days",
                     "signing_keys", "signing_key_secret_ids", "otlp_endpoint", "otlp_protocol",
                     "otel_service_name", "otel_resource_attributes"):
            self.assertIn("validation", MODULE["variable"][name], f"variable {name} has no validation")

    def test_config_validation_refuses_plain_secrets(self):
        validations = MODULE["variable"]["config_toml"]["validation"]
        (plain_secret_check,) = [v for v in validations if "password|private_key|signing_key" in v["condition"]]
        find, reference = hcl_regexes(plain_secret_check["condition"])

        def accepted(text):
            return all(re.search(reference, m) for m in re.findall(find, text))

        self.assertTrue(accepted(EXAMPLE_CONFIG.read_text()))
        self.assertFalse(accepted('password = "hunter2"\n'))
        self.assertFalse(accepted("  private_key = '-----BEGIN OPENSSH PRIVATE KEY-----'\n"))
        self.assertTrue(accepted('password = "env:PGPASSWORD"\nprivate_key = "file:/run/key"\n'))
        self.assertFalse(accepted('signing_key = "-----BEGIN PRIVATE KEY-----\\nMC4CAQAwBQYDK2VwBCIEI..."\n'))
        self.assertTrue(accepted('signing_key = "sm://p-1/custody-signing-key#2"\n'))


class VersionsTest(unittest.TestCase):
    def test_pins(self):
        for where, tf in ALL.items():
            (settings,) = tf["terraform"]
            self.assertEqual(settings["required_version"], ">= 1.5", where)
            google = block(settings, "required_providers")["google"]
            self.assertEqual(google["source"], "hashicorp/google", where)
            self.assertRegex(google["version"], r"^~> 6\.\d+$", where)


class SshFirewallTest(unittest.TestCase):
    def test_ssh_only_from_the_gateway_egress_subnet(self):
        rules = MODULE["resource"]["google_compute_firewall"]
        allow = rules["ssh_from_gateway"]
        self.assertEqual(allow["direction"], "INGRESS")
        self.assertEqual(allow["source_ranges"], ["${data.google_compute_subnetwork.egress[0].ip_cidr_range}"])
        self.assertEqual(allow["target_tags"], "${var.ssh_target_tags}")
        deny = rules["ssh_deny_others"]
        self.assertIn("deny", deny)
        self.assertEqual(deny["source_ranges"], ["0.0.0.0/0"])
        self.assertEqual(deny["priority"], "${var.ssh_firewall_priority + 1}")
        self.assertEqual(deny["target_tags"], "${var.ssh_target_tags}")

    def test_example_turns_it_on_with_direct_vpc_egress(self):
        custody = EXAMPLE["module"]["custody"]
        self.assertEqual(custody["source"], "../..")
        self.assertTrue(custody["ssh_target_tags"])
        self.assertEqual(custody["vpc_subnetwork"], "${google_compute_subnetwork.egress.id}")
        self.assertEqual(custody["vpc_egress"], "PRIVATE_RANGES_ONLY")


class ExampleTest(unittest.TestCase):
    ALLOWED_KEYS = {
        "server": {"listen"},
        "identity": {"audiences", "issuers", "signing_key", "admins", "delegation_max_ttl", "google_groups"},
        "identity.issuers": {"issuer", "jwks_uri", "groups_claim", "email_domains", "audiences",
                             "workload_identity_pool", "attribute_mapping"},
        "recording": {"store", "signing_key", "flush_interval", "segment_bytes", "memory_budget",
                      "failure_grace", "queue_events", "endpoint"},
        "telemetry": {"otlp_endpoint", "otlp_protocol", "service_name", "google_auth", "project_id",
                      "span_queue"},
        "connections": {"name", "kind", "host", "port", "database", "user", "password", "tls", "allow",
                        "masking", "guardrails", "private_key", "host_key", "delegation",
                        "instance", "ip_type", "iam_auth"},
        "connections.masking": {"detectors", "columns", "exempt"},
        "connections.delegation": {"originators", "max_depth", "max_age", "via"},
        "connections.guardrails": {"deny"},
    }
    PLACEHOLDERS = (
        "https://custody-123456789012.us-central1.run.app",
        "my-project",
        'host = "10.30.0.3"',
    )

    @classmethod
    def setUpClass(cls):
        cls.text = EXAMPLE_CONFIG.read_text()
        cls.config = tomllib.loads(cls.text)
        cls.connections = {c["name"]: c for c in cls.config["connections"]}

    def test_only_documented_keys(self):
        cfg = self.config
        self.assertEqual(set(cfg) - {"server", "identity", "recording", "telemetry", "connections"}, set())
        self.assertLessEqual(set(cfg["server"]), self.ALLOWED_KEYS["server"])
        self.assertLessEqual(set(cfg["identity"]), self.ALLOWED_KEYS["identity"])
        for issuer in cfg["identity"]["issuers"]:
            self.assertLessEqual(set(issuer), self.ALLOWED_KEYS["identity.issuers"])
        self.assertLessEqual(set(cfg["recording"]), self.ALLOWED_KEYS["recording"])
        self.assertLessEqual(set(cfg.get("telemetry", {})), self.ALLOWED_KEYS["telemetry"])
        for conn in cfg["connections"]:
            self.assertLessEqual(set(conn), self.ALLOWED_KEYS["connections"], conn["name"])
            self.assertLessEqual(set(conn.get("masking", {})), self.ALLOWED_KEYS["connections.masking"])
            self.assertLessEqual(set(conn.get("guardrails", {})), self.ALLOWED_KEYS["connections.guardrails"])
            self.assertLessEqual(set(conn.get("delegation", {})), self.ALLOWED_KEYS["connections.delegation"])

    def test_no_plain_secrets(self):
        for conn in self.config["connections"]:
            for key in ("password", "private_key"):
                if key in conn:
                    self.assertRegex(conn[key], r"^(sm://|env:|file:)", f"{conn['name']}.{key}")
        self.assertNotIn("BEGIN", self.text)

    def test_pg_prod(self):
        pg = self.connections["pg-prod"]
        self.assertEqual(pg["kind"], "postgres")
        self.assertEqual(pg["tls"], "verify-full")
        self.assertEqual(pg["password"], "sm://my-project/pg-prod-password")
        self.assertIn("serviceAccount:deployer@my-project.iam.gserviceaccount.com", pg["allow"])

    def test_web_1(self):
        web = self.connections["web-1"]
        self.assertEqual(web["kind"], "ssh")
        self.assertTrue(web["private_key"].startswith("sm://"))
        self.assertTrue(web["host_key"].startswith("ssh-ed25519 AAAA"))

    def test_recording_store(self):
        self.assertRegex(self.config["recording"]["store"], r"^gs://[a-z0-9._-]+/recordings$")
        self.assertNotIn("endpoint", self.config["recording"], "an emulator's API root has no place on Cloud Run")

    def test_recordings_are_signed_with_the_module_key(self):
        self.assertEqual(self.config["recording"]["signing_key"], "sm://my-project/custody-signing-key")
        self.assertEqual(EXAMPLE["module"]["custody"]["signing_keys"], ["signing-key", "delegation-key"])
        self.assertEqual(EXAMPLE["locals"]["name"], "custody")

    def test_delegation_tokens_are_signed_with_their_own_key(self):
        identity = self.config["identity"]
        # Its own secret (not the recording key), pinned: every instance must
        # hold the same key to check tokens another instance signed.
        self.assertEqual(identity["signing_key"], "sm://my-project/custody-delegation-key#1")
        self.assertNotEqual(identity["signing_key"].split("#")[0], self.config["recording"]["signing_key"].split("#")[0])
        self.assertEqual(identity["admins"], ["group:security@example.com"])
        self.assertEqual(identity.get("delegation_max_ttl", "12h"), "12h")

    def test_one_connection_takes_delegated_work_only(self):
        delegated = {name: c for name, c in self.connections.items() if "delegation" in c}
        self.assertEqual(set(delegated), {"pg-nightly"})
        conn = delegated["pg-nightly"]
        policy = conn["delegation"]
        self.assertEqual(policy["max_age"], "24h")
        self.assertTrue(policy["originators"])
        self.assertIsInstance(policy["max_depth"], int)
        self.assertGreaterEqual(policy["max_depth"], len(policy["via"]))
        for hop in policy["via"]:
            self.assertRegex(hop, r"^(user|serviceAccount):")
            # A hop on the chain may be its last caller: it must be allowed too.
            self.assertIn(hop, conn["allow"])
        # The deployer's own pipeline (examples/cloudbuild-migration.yaml) uses
        # pg-prod by itself: no delegation policy there.
        self.assertNotIn("delegation", self.connections["pg-prod"])
        self.assertIn("guardrails", conn)

    def test_telemetry_goes_to_google_with_the_trace_role(self):
        telemetry = self.config["telemetry"]
        self.assertEqual(telemetry["otlp_endpoint"], "https://telemetry.googleapis.com")
        self.assertIn(telemetry.get("otlp_protocol", "http/protobuf"), ("http/protobuf", "grpc"))
        self.assertEqual(telemetry["project_id"], "my-project")
        self.assertEqual(telemetry["service_name"], EXAMPLE["locals"]["name"])
        custody = EXAMPLE["module"]["custody"]
        self.assertIs(custody["google_trace_export"], True)
        self.assertNotIn("otlp_endpoint", custody, "the config's [telemetry] names the endpoint")
        self.assertIn("telemetry.googleapis.com", EXAMPLE["locals"]["apis"])

    def test_principals_use_iam_member_syntax(self):
        members = [m for c in self.config["connections"] for m in c.get("allow", [])]
        members += [m for c in self.config["connections"] for m in c.get("masking", {}).get("exempt", [])]
        members += self.config["identity"].get("admins", [])
        for c in self.config["connections"]:
            members += c.get("delegation", {}).get("originators", []) + c.get("delegation", {}).get("via", [])
        self.assertTrue(members)
        for m in members:
            self.assertRegex(m, r"^(user|group|serviceAccount|domain):[^@\s]+@?[^\s]*$")

    def test_substitutions_find_their_placeholders(self):
        main = EXAMPLE["files"]["main.tf"]
        for placeholder in self.PLACEHOLDERS:
            self.assertIn(placeholder, self.text, placeholder)
            self.assertIn(json.dumps(placeholder)[1:-1], main, placeholder)
        self.assertIn('file("${path.module}/custody.toml")', EXAMPLE["locals"]["config_toml"])

    def test_substituted_config_satisfies_the_module(self):
        """What the module's preconditions check, on the config as applied."""
        project = "acme-prod-1"
        text = (self.text.replace(self.PLACEHOLDERS[0], "https://custody-42.europe-west1.run.app")
                .replace("my-project", project)
                .replace(self.PLACEHOLDERS[2], 'host = "10.30.0.5"'))
        config = tomllib.loads(text)
        # recording.store is the bucket the example gives the module.
        self.assertEqual(EXAMPLE["locals"]["bucket_name"], "${var.project_id}-custody-recordings")
        self.assertTrue(config["recording"]["store"].startswith(f"gs://{project}-custody-recordings/"))
        # every sm:// reference is a secret the module is told to grant.
        refs = set(re.findall(r"sm://([^/\"'#\s]+)/([^/\"'#\s]+)", text))
        granted = set()
        for expr in EXAMPLE["module"]["custody"]["upstream_secret_ids"]:
            rname = re.fullmatch(r"\$\{google_secret_manager_secret\.(\w+)\.secret_id\}", expr).group(1)
            granted.add((project, EXAMPLE["resource"]["google_secret_manager_secret"][rname]["secret_id"]))
        # ...or a signing key secret the module creates (NAME-KEY).
        signing = {(project, f'{EXAMPLE["locals"]["name"]}-{k}') for k in EXAMPLE["module"]["custody"]["signing_keys"]}
        self.assertEqual(refs, granted | signing)
        # recording.signing_key and identity.signing_key name two different
        # signing key secrets, as the module's preconditions read them.
        key_refs = set()
        for table in ("recording", "identity"):
            key_ref = re.match(r"^sm://([^/#]+)/([^/#]+)(?:#[A-Za-z0-9_-]+)?$", config[table]["signing_key"])
            self.assertIn(key_ref.groups(), signing, table)
            key_refs.add(key_ref.groups())
        self.assertEqual(len(key_refs), 2, "one key signs recordings, another delegation tokens")
        checked = module_signing_keys(text, {"/".join(s) for s in signing})
        self.assertEqual(checked["recording"], [config["recording"]["signing_key"]])
        self.assertEqual(checked["identity"], [config["identity"]["signing_key"]])
        self.assertEqual(checked["foreign_recording"] + checked["foreign_identity"], [])
        # google_trace_export is true exactly when spans go to Google's endpoint.
        (google,) = hcl_regexes(MODULE["locals"]["google_otlp_endpoint"])
        self.assertEqual(bool(re.search(google, config["telemetry"]["otlp_endpoint"])),
                         EXAMPLE["module"]["custody"]["google_trace_export"])
        # No recording.endpoint (the module refuses it).
        self.assertEqual(re.findall(r"(?m)^\s*endpoint\s*=", text), [])

    def test_cloud_sql_private_ip_only(self):
        sql = EXAMPLE["resource"]["google_sql_database_instance"]["pg"]
        ip = block(block(sql, "settings"), "ip_configuration")
        self.assertIs(ip["ipv4_enabled"], False)
        self.assertEqual(ip["private_network"], "${google_compute_network.vpc.id}")
        self.assertNotIn("authorized_networks", ip)
        self.assertEqual(ip["ssl_mode"], "ENCRYPTED_ONLY")

    @unittest.skipUnless(os.environ.get("CUSTODY_BIN"), "set CUSTODY_BIN to run `custody config check`")
    def test_custody_config_check(self):
        result = subprocess.run([os.environ["CUSTODY_BIN"], "config", "check", str(EXAMPLE_CONFIG)],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)


if __name__ == "__main__":
    program = unittest.main(verbosity=2, exit=False)
    result = program.result
    failed = len(result.failures) + len(result.errors)
    skipped = len(result.skipped)
    print(f"terraform: {result.testsRun - failed - skipped} passed, {failed} failed, {skipped} skipped")
    sys.exit(1 if failed else 0)
