// Validates Kubernetes manifests against the API schemas of the npm package kubernetes-models,
// then checks rekey's own contract for the pods that run it (probes on the health endpoints, a
// termination grace that fits the SIGTERM handling, bounded retries and run time, resources).
// Usage: node validate.mjs FILE.yaml...   Exit 0 iff every document passes; one line per problem.
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";

const problems = [];
let checked = 0;

function modelPath(apiVersion, kind) {
  const parts = apiVersion.split("/");
  return parts.length === 1
    ? `kubernetes-models/${parts[0]}/${kind}`
    : `kubernetes-models/${parts[0]}/${parts[1]}/${kind}`;
}

// rekey's contract, for every pod template that runs the rekey image.
function checkPod(where, spec, owner) {
  for (const c of spec.containers ?? []) {
    const args = c.args ?? [];
    const command = args[0];
    if (!c.image || !c.image.includes("rekey")) continue;
    const need = (ok, what) => { if (!ok) problems.push(`${where}: container ${c.name}: ${what}`); };
    need(c.resources?.requests && c.resources?.limits, "set resources.requests and resources.limits");
    need(c.securityContext?.allowPrivilegeEscalation === false, "set allowPrivilegeEscalation: false");
    if (command === "work" || command === "exporter") {
      const listen = args[args.indexOf("--listen") + 1];
      need(args.includes("--listen") && listen, "serve the health endpoints (--listen ADDR:PORT)");
      const port = listen ? Number(listen.split(":").pop()) : NaN;
      const named = (c.ports ?? []).find((p) => p.containerPort === port);
      const probePort = (p) => p?.httpGet && (p.httpGet.port === port || p.httpGet.port === named?.name);
      need(c.livenessProbe?.httpGet?.path === "/healthz" && probePort(c.livenessProbe),
           "livenessProbe must GET /healthz on the --listen port");
      need(c.readinessProbe?.httpGet?.path === "/readyz" && probePort(c.readinessProbe),
           "readinessProbe must GET /readyz on the --listen port");
    }
    if (command === "work") {
      // A worker finishes its batch and exits within 10 s of SIGTERM; give it more than that.
      need((spec.terminationGracePeriodSeconds ?? 30) >= 15,
           "terminationGracePeriodSeconds must be at least 15 (10 s SIGTERM contract plus margin)");
    }
  }
  if (owner === "Job") {
    if (spec.restartPolicy !== "Never" && spec.restartPolicy !== "OnFailure") {
      problems.push(`${where}: a Job's pods need restartPolicy Never or OnFailure`);
    }
  }
}

function checkJobSpec(where, spec) {
  if (spec.backoffLimit === undefined) problems.push(`${where}: set backoffLimit`);
  if (spec.activeDeadlineSeconds === undefined) problems.push(`${where}: set activeDeadlineSeconds`);
  checkPod(`${where} pod`, spec.template?.spec ?? {}, "Job");
}

for (const file of process.argv.slice(2)) {
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  for (const [i, doc] of docs.entries()) {
    if (doc.errors.length > 0) {
      problems.push(`${file}#${i}: YAML: ${doc.errors[0].message}`);
      continue;
    }
    const obj = doc.toJS();
    if (obj === null || obj === undefined) continue;
    const where = `${file}#${i} ${obj.kind ?? "?"} ${obj.metadata?.name ?? "?"}`;
    if (typeof obj.apiVersion !== "string" || typeof obj.kind !== "string") {
      problems.push(`${where}: apiVersion and kind are required`);
      continue;
    }
    let mod;
    try {
      mod = await import(modelPath(obj.apiVersion, obj.kind));
    } catch {
      problems.push(`${where}: unknown kind ${obj.kind} in ${obj.apiVersion}`);
      continue;
    }
    try {
      new mod[obj.kind](obj).validate();
    } catch (e) {
      problems.push(`${where}: schema: ${String(e.message ?? e).split("\n").slice(0, 6).join("; ")}`);
      continue;
    }
    if (obj.kind === "Job") checkJobSpec(where, obj.spec);
    if (obj.kind === "CronJob") {
      if (obj.spec.concurrencyPolicy !== "Forbid") {
        problems.push(`${where}: concurrencyPolicy must be Forbid (runs must not overlap)`);
      }
      checkJobSpec(where, obj.spec.jobTemplate.spec);
    }
    if (obj.kind === "Deployment") checkPod(`${where} pod`, obj.spec.template.spec, "Deployment");
    checked++;
    console.log(`ok: ${obj.apiVersion} ${obj.kind} ${obj.metadata?.name}`);
  }
}
for (const p of problems) console.log(`FAIL: ${p}`);
console.log(`${checked} manifests valid, ${problems.length} problems`);
process.exit(problems.length === 0 && checked > 0 ? 0 : 1);
