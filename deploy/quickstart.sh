#!/usr/bin/env bash
# mandate quickstart: the whole flow on a machine with no AWS account.
#
#   1. installs a local AWS emulator (moto, pinned in tests/requirements.txt) and the AWS CLI
#      into .venv, and builds mandate;
#   2. starts moto on a free loopback port and seeds a role whose trust policy allows the broker;
#   3. starts `mandate serve` with the example profiles;
#   4. runs an agent's AWS CLI command through credential_process and shows the scoped session
#      identity, the session policy STS received, and the audit records;
#   5. the Kiro scenario: the agent asks for a destructive capability and gets a pending request
#      id, a human approves, the agent proceeds; the human revokes it (also at AWS) and it stops;
#   6. stops everything it started (also on failure or Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "installing the pinned test tools into .venv (moto, boto3, AWS CLI)"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt

say "building mandate"
cargo build --quiet
target_dir="${CARGO_TARGET_DIR:-$root/target}"
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
mandate="$target_dir/debug/mandate"

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
endpoint="http://127.0.0.1:$port"
say "starting moto (STS and IAM) on $endpoint"
.venv/bin/moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
pids+=($!)
http_get() { .venv/bin/python -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1"; }
for _ in $(seq 100); do http_get "$endpoint/moto-api/" >/dev/null 2>&1 && break; sleep 0.1; done

# The broker's own (base) credentials. With moto any key works; in real use they come from the
# default chain (SSO, instance role, ...).
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
unset AWS_SESSION_TOKEN AWS_PROFILE

say "seeding the role the agents assume (its trust policy allows the broker)"
cat >"$work/trust.json" <<JSON
{"Version":"2012-10-17","Statement":[{"Effect":"Allow",
 "Principal":{"AWS":"arn:aws:iam::123456789012:root"},
 "Action":["sts:AssumeRole","sts:TagSession","sts:SetSourceIdentity"]}]}
JSON
.venv/bin/aws --endpoint-url "$endpoint" iam create-role --role-name agent-role \
  --assume-role-policy-document "file://$work/trust.json" --query Role.Arn --output text

cat >"$work/broker.toml" <<TOML
[broker]
state_dir = "state"
socket = "run/mandate.sock"
profiles_dir = "$root/profiles"
region = "us-east-1"
endpoint_url = "$endpoint"

[roles.sandbox]
arn = "arn:aws:iam::123456789012:role/agent-role"
[roles.deployer]
arn = "arn:aws:iam::123456789012:role/agent-role"
[roles.admin]
arn = "arn:aws:iam::123456789012:role/agent-role"

[agents.quickstart]
profiles = ["readonly", "s3-data", "deploy-staging"]
uids = [$(id -u)]
operator = "you"

# The human who approves. Here it is you, on the same uid as the agent, so approval is
# advisory (the daemon says so at start); in real use run the agent as another uid or in a
# container with the sidecar.
[approvers.you]
uids = [$(id -u)]
TOML

say "preparing the broker's state: audit directory and checkpoint signing key (mandate init)"
"$mandate" --config "$work/broker.toml" init

say "starting mandate serve"
"$mandate" --config "$work/broker.toml" serve 2>"$work/mandate.log" &
pids+=($!)
for _ in $(seq 100); do [ -S "$work/run/mandate.sock" ] && break; sleep 0.1; done
[ -S "$work/run/mandate.sock" ] || { cat "$work/mandate.log"; exit 1; }

# The agent's view: no keys of its own, only credential_process.
cat >"$work/aws-config" <<INI
[profile agent]
credential_process = $mandate --config $work/broker.toml credential-process readonly
region = us-east-1

[profile deployer]
credential_process = $mandate --config $work/broker.toml credential-process deploy-staging
region = us-east-1
INI
agent_env=(env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY AWS_CONFIG_FILE="$work/aws-config"
  AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true)

say "the agent runs: aws sts get-caller-identity --profile agent"
"${agent_env[@]}" .venv/bin/aws --endpoint-url "$endpoint" sts get-caller-identity --profile agent

say "the session policy STS received for that session (from moto's records)"
http_get "$endpoint/moto-api/data.json" | .venv/bin/python -c '
import json, sys
roles = json.load(sys.stdin)["sts"]["AssumedRole"]
for r in roles:
    print("session:", r["session_name"])
    print("policy :", r["policy"][:300] + ("..." if len(r["policy"]) > 300 else ""))'

say "a profile the agent is not bound to is refused (and audited)"
"$mandate" --config "$work/broker.toml" credential-process breakglass-admin || echo "(exit code $?)"

m() { "$mandate" --config "$work/broker.toml" "$@"; }

say "the Kiro scenario: the agent asks for a destructive capability (deploy-staging may delete stacks)"
set +e
"${agent_env[@]}" .venv/bin/aws --endpoint-url "$endpoint" sts get-caller-identity --profile deployer 2>"$work/pending.txt"
echo "(exit code $?)"
set -e
cat "$work/pending.txt"
id=$(sed -n 's/.*request \([0-9a-f]\{16\}\) is pending.*/\1/p' "$work/pending.txt" | head -1)
[ -n "$id" ] || { echo "no pending request id"; exit 1; }

say "a human looks at the request and approves it: mandate approvals list; mandate approve $id"
m approvals list
m approve "$id" --note "reviewed: staging stack update"

say "the agent proceeds with the approved, scoped session"
"${agent_env[@]}" .venv/bin/aws --endpoint-url "$endpoint" sts get-caller-identity --profile deployer

say "the human revokes the agent, also at AWS: mandate revoke --agent quickstart --aws"
m revoke --agent quickstart --aws
echo "the inline policy now on the role (AWS applies it within minutes):"
.venv/bin/aws --endpoint-url "$endpoint" iam get-role-policy --role-name agent-role \
  --policy-name mandate-revocations --query PolicyDocument --output json

say "the agent is stopped: its next call gets nothing"
set +e
"${agent_env[@]}" .venv/bin/aws --endpoint-url "$endpoint" sts get-caller-identity --profile deployer
echo "(exit code $?)"
set -e

say "the audit log: mandate audit tail, then mandate audit verify"
"$mandate" --config "$work/broker.toml" audit tail
"$mandate" --config "$work/broker.toml" audit verify

say "done; stopping moto and mandate"
