// Validate prometheus-operator objects (ServiceMonitor, PrometheusRule, AlertmanagerConfig, ...) against the
// operator's schemas, as packaged by @kubernetes-models/prometheus-operator:
//   1. the JSON-schema validators generated from the operator's API (types, patterns, required fields,
//      enums); the child routes of an AlertmanagerConfig, which the CRD leaves unchecked, are validated
//      as Routes too;
//   2. the package's TypeScript types, compiled with tsc, to reject unknown fields (a CRD's structural
//      schema silently prunes them, so a misspelt or snake_case key would otherwise pass unnoticed).
// Usage: node validate_crds.mjs OBJECTS.json  (a JSON array of objects). Prints one JSON report on stdout
// and exits 1 if any object is invalid.
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";

const HERE = dirname(fileURLToPath(import.meta.url));
const PKG = "@kubernetes-models/prometheus-operator/monitoring.coreos.com";

async function model(apiVersion, kind) {
  const version = apiVersion.split("/")[1];
  try {
    const module = await import(`${PKG}/${version}/${kind}`);
    return { Model: module[kind], module: `${PKG}/${version}/${kind}`, version };
  } catch {
    return null;
  }
}

function childRoutes(route, path) {
  const found = [];
  (route?.routes ?? []).forEach((child, i) => {
    const childPath = `${path}/routes/${i}`;
    found.push({ route: child, path: childPath }, ...childRoutes(child, childPath));
  });
  return found;
}

// The package types the operator's EmbeddedPersistentVolumeClaim (spec.storage.volumeClaimTemplate of a
// Prometheus or an Alertmanager) as a model of its own, with apiVersion and kind required and fixed; the
// operator's CRD has them as optional strings that nobody sets (the operator builds the claim). Give the
// validated copy the package's constants where they are absent, so the rest of the template is checked.
function withEmbeddedClaimTypes(obj) {
  const template = obj.spec?.storage?.volumeClaimTemplate;
  if (!["Prometheus", "Alertmanager", "ThanosRuler"].includes(obj.kind) || !template) return obj;
  const copy = structuredClone(obj);
  copy.spec.storage.volumeClaimTemplate = {
    apiVersion: "monitoring.coreos.com/v1",
    kind: "EmbeddedPersistentVolumeClaim",
    ...template,
  };
  return copy;
}

function schemaErrors(Model, data, prefix = "") {
  try {
    new Model(data).validate();
    return [];
  } catch (err) {
    const errors = err.errors ?? [{ instancePath: "", message: err.message }];
    return errors.map((e) => `${prefix}${e.instancePath || "/"}: ${e.message}`);
  }
}

async function main() {
  const objects = JSON.parse(readFileSync(process.argv[2], "utf8"));
  const report = [];
  const typed = [];
  for (const [index, given] of objects.entries()) {
    const obj = withEmbeddedClaimTypes(given);
    const entry = { kind: obj.kind, name: obj.metadata?.name, errors: [] };
    report.push(entry);
    const found = obj.apiVersion?.startsWith("monitoring.coreos.com/") && (await model(obj.apiVersion, obj.kind));
    if (!found) {
      entry.errors.push(`no prometheus-operator schema for ${obj.apiVersion} ${obj.kind}`);
      continue;
    }
    entry.errors.push(...schemaErrors(found.Model, obj));
    typed.push({ index, type: `I${obj.kind}`, module: found.module, value: obj });
    if (obj.kind === "AlertmanagerConfig") {
      const route = await model(obj.apiVersion, "Route");
      for (const child of childRoutes(obj.spec?.route, "/spec/route")) {
        entry.errors.push(...schemaErrors(route.Model, child.route, child.path));
        typed.push({ index, type: "IRoute", module: route.module, value: child.route, path: child.path });
      }
    }
  }

  // Unknown fields: each object as a typed literal, so tsc's excess-property check names them.
  const imports = new Map();
  const lines = [];
  typed.forEach((t, i) => {
    const alias = `T${imports.size}`;
    if (!imports.has(`${t.module}#${t.type}`)) imports.set(`${t.module}#${t.type}`, alias);
    lines.push(`// object ${t.index}${t.path ? ` ${t.path}` : ""}`);
    lines.push(`export const o${i}: ${imports.get(`${t.module}#${t.type}`)} = ${JSON.stringify(t.value)};`);
  });
  const header = [...imports].map(([key, alias]) => {
    const [module, type] = key.split("#");
    return `import type { ${type} as ${alias} } from "${module}";`;
  });
  const file = join(HERE, `.objects-${process.pid}.ts`);
  writeFileSync(file, [...header, ...lines, ""].join("\n"));
  try {
    const program = ts.createProgram([file], {
      noEmit: true,
      strict: true,
      skipLibCheck: true,
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
    });
    const source = program.getSourceFile(file);
    for (const d of ts.getPreEmitDiagnostics(program)) {
      const message = ts.flattenDiagnosticMessageText(d.messageText, " ");
      const line = d.file === source ? source.getLineAndCharacterOfPosition(d.start).line : -1;
      const marker = line > 0 ? source.text.split("\n")[line - 1] : "";
      const hit = /^\/\/ object (\d+)(?: (.*))?$/.exec(marker);
      const target = hit ? report[Number(hit[1])] : report[0];
      target.errors.push(`${hit?.[2] ?? ""} type check: ${message}`.trim());
    }
  } finally {
    rmSync(file, { force: true });
  }
  process.stdout.write(JSON.stringify(report, null, 1) + "\n");
  process.exit(report.some((r) => r.errors.length) ? 1 : 0);
}

main().catch((err) => {
  console.error(err);
  process.exit(2);
});
