// Test-only helper for tests/revocation_sim.rs (via `iam_sim_revocation` in tests/common/mod.rs):
// evaluates mandate's role revocation policy (the inline policy `mandate-revocations`, see
// `mandate::revoke::role_policy`) with an independent IAM evaluator, @cloud-copilot/iam-simulate
// (AGPL-3.0-or-later). It is never bundled or shipped; it only runs from `cargo test` after
// `npm ci --prefix tests/iam-sim`.
//
// Usage: node tests/iam-sim/revocation.mjs < INPUT.json
//
// INPUT.json:
//   { "role_policies": [ POLICY_DOCUMENT, ... ],
//     "cases": [ { "name", "action", "resource", "context": { KEY: VALUE, ... } } ] }
//
// Each case is a request by an assumed-role session of arn:aws:iam::123456789012:role/agent-role
// whose identity policies are a permissive role policy (Allow * on *) plus every document of
// `role_policies` (each attached as its own inline policy). There is no session policy. The case's
// `context` is passed as the request's context variables verbatim (e.g. `aws:SourceIdentity`,
// `aws:TokenIssueTime`, `aws:PrincipalTag/mandate-request-id`).
//
// Prints one JSON array to stdout:
//   [ { "name", "result": "Allowed" | "ExplicitlyDenied" | "ImplicitlyDenied" | "Error",
//       "errors": [...] } ]
// A case is an "Error" (never silently evaluated without its context) when the simulator rejects
// the request or drops any of the given context keys (`ignoredContextKeys`), or the resource is
// evaluated as anything but one concrete resource.

import { readFileSync } from 'node:fs'
import { runSimulation } from '@cloud-copilot/iam-simulate'

const ACCOUNT = '123456789012'
const ROLE = 'agent-role'
const PERMISSIVE_ROLE_POLICY = {
  Version: '2012-10-17',
  Statement: [{ Effect: 'Allow', Action: '*', Resource: '*' }]
}

/** The session name STS would see: the broker uses the source identity (plus a suffix). */
function principalFor(context) {
  const sourceIdentity = context['aws:SourceIdentity']
  const session = typeof sourceIdentity === 'string' ? `${sourceIdentity}-session` : 'session'
  return `arn:aws:sts::${ACCOUNT}:assumed-role/${ROLE}/${session}`.slice(0, 200)
}

async function runCase(rolePolicies, c) {
  const context = c.context ?? {}
  const r = await runSimulation(
    {
      request: {
        principal: principalFor(context),
        action: c.action,
        resource: { resource: c.resource, accountId: ACCOUNT },
        contextVariables: context
      },
      identityPolicies: [
        { name: 'permissive-role-policy', policy: PERMISSIVE_ROLE_POLICY },
        ...rolePolicies.map((policy, i) => ({ name: `mandate-revocations-${i}`, policy }))
      ],
      serviceControlPolicies: [],
      resourceControlPolicies: []
    },
    {}
  )
  if (r.resultType === 'error') {
    return { result: 'Error', errors: [`simulator rejected the request: ${JSON.stringify(r.errors)}`] }
  }
  if (r.resultType !== 'single') {
    return {
      result: 'Error',
      errors: [`expected one concrete resource, got resultType ${r.resultType} (use a concrete ARN)`]
    }
  }
  const ignored = r.result.ignoredContextKeys ?? []
  if (ignored.length > 0) {
    return {
      result: 'Error',
      errors: [`simulator ignored context keys ${ignored.join(', ')} for ${c.action} on ${c.resource}`]
    }
  }
  return { result: r.overallResult, errors: [] }
}

const input = JSON.parse(readFileSync(0, 'utf8'))
const rolePolicies = input.role_policies ?? []
const out = []
for (const c of input.cases ?? []) {
  let r
  try {
    r = await runCase(rolePolicies, c)
  } catch (e) {
    r = { result: 'Error', errors: [String(e?.stack ?? e)] }
  }
  out.push({ name: c.name, ...r })
}
process.stdout.write(JSON.stringify(out) + '\n')
