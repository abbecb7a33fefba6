#!/usr/bin/env python3
"""Checks of the deploy files that cannot be built or run here (no Docker engine,
no Cloud Build): the Dockerfile, .dockerignore, cloudbuild.yaml and
examples/cloudbuild-migration.yaml keep the contract docs/deploy.md describes.

Run: python3 tests/terraform/test_deploy_files.py   (standard library only)
"""

import json
import re
import sys
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def read(rel):
    return (ROOT / rel).read_text()


def dockerfile_instructions(text):
    """[(INSTRUCTION, args)] with comments dropped and continuations joined."""
    out, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            word, _, args = current.partition(" ")
            out.append((word.upper(), args.strip()))
            current = ""
    return out


class DockerfileTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.instructions = dockerfile_instructions(read("Dockerfile"))

    def of(self, name):
        return [args for word, args in self.instructions if word == name]

    def test_stages(self):
        froms = self.of("FROM")
        self.assertEqual(froms[0], "rust:1.95-bookworm AS builder")
        self.assertEqual(froms[-1], "gcr.io/distroless/static-debian12:nonroot")

    def test_build_step_is_the_ci_command(self):
        run = " ".join(self.of("RUN"))
        # libclang for pg_query's bindgen, musl-gcc for the static target.
        self.assertIn("libclang-dev", run)
        self.assertIn("musl-tools", run)
        self.assertIn("cargo build --release --locked --target x86_64-unknown-linux-musl", self.of("RUN"))

    def test_runtime(self):
        self.assertIn("--from=builder /src/target/x86_64-unknown-linux-musl/release/custody /custody", self.of("COPY"))
        self.assertEqual(json.loads(self.of("ENTRYPOINT")[-1]), ["/custody", "serve"])
        self.assertEqual(self.of("USER")[-1], "nonroot:nonroot")
        self.assertEqual(self.of("EXPOSE")[-1], "8080")
        env = " ".join(self.of("ENV"))
        self.assertIn("CUSTODY_CONFIG=/etc/custody/custody.toml", env)
        self.assertIn("PORT=8080", env)

    def test_config_path_matches_the_terraform_mount(self):
        main = read("terraform/main.tf")
        self.assertIn('value = "/etc/custody/custody.toml"', main)
        self.assertIn('mount_path = "/etc/custody"', main)

    def test_dockerignore_keeps_the_context_small_and_clean(self):
        ignored = {line.strip() for line in read(".dockerignore").splitlines() if line.strip() and not line.startswith("#")}
        for entry in ("target/", ".git/", "*.tfstate", "terraform/"):
            self.assertIn(entry, ignored)
        for needed in ("Cargo.toml", "Cargo.lock", "src/", "src"):
            self.assertNotIn(needed, ignored)


class CloudBuildTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.text = read("cloudbuild.yaml")

    def test_steps_in_order(self):
        ids = re.findall(r"^  - id: ([\w-]+)$", self.text, re.M)
        self.assertEqual(ids, ["test", "terraform-fmt", "build", "smoke", "push", "deploy"])

    def test_runs_the_project_tests(self):
        self.assertIn("bash scripts/test.sh", self.text)
        self.assertIn('args: ["fmt", "-check", "-recursive", "terraform"]', self.text)
        # scripts/test.sh runs the Terraform checks too.
        self.assertIn("scripts/test-terraform.sh", read("scripts/test.sh"))

    def test_pushes_to_artifact_registry_and_deploys_by_digest(self):
        self.assertIn("-docker.pkg.dev/${PROJECT_ID}/", self.text)
        self.assertIn('docker push "${_IMAGE}:${BUILD_ID}"', self.text)
        self.assertIn("{{index .RepoDigests 0}}", self.text)
        self.assertRegex(self.text, r'gcloud run deploy "\$\{_SERVICE\}" \\\n\s+--image "\$\(cat /workspace/image-ref\)"')

    def test_smoke_test_checks_health_and_size(self):
        self.assertIn("http://custody-smoke:8080/healthz", self.text)
        self.assertIn("26214400", self.text)


class MigrationPipelineTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.text = read("examples/cloudbuild-migration.yaml")

    def test_exec_with_the_steps_own_id_token(self):
        self.assertIn(
            "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/identity"
            "?audience=${CUSTODY_GATEWAY}&format=full",
            self.text,
        )
        self.assertIn("Metadata-Flavor: Google", self.text)
        self.assertIn("export CUSTODY_TOKEN", self.text)
        self.assertIn('custody exec pg-prod -- "$(cat migrations/001.sql)"', self.text)

    def test_traceparent_is_passed_on(self):
        self.assertEqual(self.text.count('export TRACEPARENT="$(cat /workspace/traceparent)"'), 2)
        self.assertIn('echo "00-${trace_id}-${span_id}-01"', self.text)

    def test_connect_for_a_tool(self):
        self.assertIn("custody connect pg-prod --listen 127.0.0.1:6432 &", self.text)
        self.assertIn('"postgresql://app@127.0.0.1:6432/app"', self.text)

    def test_listener_wait_matches_proc_net_tcp(self):
        (pattern,) = re.findall(r"grep -qE '([^']+)' /proc/net/tcp", self.text)
        line = "   1: 0100007F:1920 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 37132 1"
        self.assertRegex(line, pattern)
        self.assertNotRegex(line.replace(" 0A ", " 01 "), pattern)

    def test_gateway_url_matches_the_example_audience(self):
        gateway = re.search(r"_CUSTODY_GATEWAY: (\S+)", self.text).group(1)
        self.assertIn(f'audiences = ["{gateway}"]', read("terraform/examples/complete/custody.toml"))


class DocsTest(unittest.TestCase):
    def test_deploy_doc_covers_the_build_iam(self):
        doc = read("docs/deploy.md")
        for needle in ("terraform apply", "roles/run.invoker", "allow", "roles/iam.serviceAccountTokenCreator",
                       "cloudbuild.yaml", "examples/cloudbuild-migration.yaml"):
            self.assertIn(needle, doc)

    def test_deploy_doc_covers_the_audit_trail(self):
        doc = read("docs/deploy.md")
        for needle in ("custody dev keygen", "gcloud secrets versions add custody-signing-key",
                       "-target=module.custody.google_secret_manager_secret.signing_key",
                       "custody verify AUDIT_ID --store gs://", "--public-key", "**Rotation.**",
                       "flush_interval", "memory_budget", "failure_grace", "write-once",
                       "https://telemetry.googleapis.com", "google_trace_export", "roles/cloudtrace.agent",
                       "gcp.project_id", "GOOGLE_CLOUD_PROJECT", "logging.googleapis.com/trace", "sidecar"):
            self.assertIn(needle, doc)

    def test_deploy_doc_covers_delegation_and_revocation(self):
        doc = read("docs/deploy.md")
        section = doc[doc.index("## Delegation and revocation"):]
        section = section[:section.index("\n## ", 1)]
        for needle in ("[identity] signing_key", "gcloud secrets versions add custody-delegation-key",
                       "custody dev keygen", "/.well-known/jwks.json", "signing_key_secret_ids",
                       "**Rotation invalidates every outstanding delegation token.**", "#N",
                       "[identity] admins", "custody revoke", "PREFIX/_revocations/MEMBER",
                       "within 5 s", "CUSTODY_DELEGATION", "/workspace", "gcloud run jobs execute",
                       "--update-env-vars"):
            self.assertIn(needle, section)
        # The first deployment adds both keys before the gateway starts.
        first = doc[doc.index("## First deployment"):doc.index("### Things to know")]
        self.assertIn("gcloud secrets versions add custody-delegation-key", first)
        # The example pins the delegation key's first version.
        self.assertIn('signing_key = "sm://my-project/custody-delegation-key#1"',
                      read("terraform/examples/complete/custody.toml"))


if __name__ == "__main__":
    program = unittest.main(verbosity=2, exit=False)
    result = program.result
    failed = len(result.failures) + len(result.errors)
    skipped = len(result.skipped)
    print(f"deploy-files: {result.testsRun - failed - skipped} passed, {failed} failed, {skipped} skipped")
    sys.exit(1 if failed else 0)
