"""Write schemas/replies/*.schema.json: the JSON Schema of each --json reply of bpfdeploy.

    python3 scripts/make-reply-schemas.py [OUT_DIR]

The schemas are the contract for wrappers (the README's command table points at them); this
script is where they are written from, and tests/unit/test_reply_schemas.py checks that the files
match it and that real replies match the files. Keys are required where every reply has them;
an object may carry more keys (adding a key does not raise format_version).
"""
import json
import sys
from pathlib import Path

BASE = "https://bpfdeploy.example/schemas/replies/"
out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "schemas" / "replies"
out.mkdir(parents=True, exist_ok=True)
def s(name, title, body, defs=None):
    doc = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": BASE + name + ".schema.json",
           "title": title}
    doc.update(body)
    if defs: doc["$defs"] = defs
    (out / f"{name}.schema.json").write_text(json.dumps(doc, indent=2) + "\n")

FV = {"description": "The reply format: raised when a key is removed or retyped (adding a key does not).",
      "const": 2}
def reply(props, required, extra_ok=True):
    return {"type": "object", "required": ["format_version", *required],
            "properties": {"format_version": FV, **props}, "additionalProperties": extra_ok}
DIAGS = {"type": "array", "items": {"$ref": "diagnostic.schema.json"}}
nullable = lambda t: {"type": [t, "null"]}
STR_LIST = {"type": "array", "items": {"type": "string"}}
SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}

s("diagnostic", "A problem found (file, manifest path, line, message, hint)", {
    "type": "object", "required": ["severity", "file", "path", "line", "column", "message", "hint"],
    "additionalProperties": False,
    "properties": {"severity": {"enum": ["error", "warning", "info"]}, "file": {"type": "string"},
                   "path": {"type": "string"}, "line": nullable("integer"), "column": nullable("integer"),
                   "message": {"type": "string"},
                   "hint": {"type": "string"}}})

state = {"type": ["object", "null"], "description": "Typed fields of one side of the change (see docs/manifest.md, How plan decides)",
         "additionalProperties": {"type": ["string", "integer", "boolean", "array", "null"]}}
entry_bytes = {"type": "string", "pattern": "^0x([0-9a-f]{2})*$"}
s("plan", "bpfdeploy plan --json (also the 'plan' of apply and destroy replies)", reply({
    "deployment": {"type": "string"}, "pin_root": {"type": "string"},
    "summary": {"type": "object", "required": ["create", "update", "replace", "delete", "no-op"],
                "additionalProperties": {"type": "integer", "minimum": 0}},
    "changes": {"type": "boolean"},
    "actions": {"type": "array", "items": {"$ref": "#/$defs/action"}},
    "conflicts": STR_LIST, "diagnostics": DIAGS,
    "skipped": {"description": "Optional attachments the plan leaves out because their hook cannot be used",
                "type": "array", "items": {"$ref": "#/$defs/skipped"}},
    "chains": {"description": "The chain of programs on each shared hook (cgroup links, tcx) after apply, first to last",
               "type": "array", "items": {
                   "type": "object", "required": ["hook", "programs", "notes"], "additionalProperties": False,
                   "properties": {"hook": {"type": "string"}, "notes": STR_LIST, "programs": {"type": "array", "items": {
                       "type": "object", "required": ["name", "prog_id", "ours", "placed_by_this_plan"],
                       "additionalProperties": False,
                       "properties": {"name": {"type": "string"}, "prog_id": nullable("integer"),
                                      "ours": {"type": "boolean"}, "placed_by_this_plan": {"type": "boolean"}}}}}}},
    "artifacts": {"description": "Where the objects came from when deployed with --artifacts (null: built here)",
                  "type": ["object", "null"],
                  "required": ["directory", "signature", "principal", "allowed_signers", "built_by", "objects"],
                  "properties": {
                      "directory": {"type": "string"}, "signature": {"enum": ["good", "unsigned", "not checked"]},
                      "principal": nullable("string"), "allowed_signers": nullable("string"),
                      "built_by": {"type": "string"},
                      "objects": {"type": "array", "items": {
                          "type": "object", "required": ["object", "sha256", "build_digest"],
                          "additionalProperties": False,
                          "properties": {"object": {"type": "string"}, "sha256": SHA256,
                                         "build_digest": SHA256}}}}},
    "mounts": {"type": "array", "description": "bpffs mounts apply makes first (then it plans again)",
               "items": {"type": "object", "required": ["fstype", "target"],
                         "properties": {"fstype": {"const": "bpf"}, "target": {"type": "string"}}}}},
    ["deployment", "pin_root", "summary", "changes", "actions", "conflicts", "diagnostics"]),
  {"skipped": {"type": "object", "required": ["attachment", "reason"], "additionalProperties": False,
               "properties": {"attachment": {"type": "string"}, "reason": {"type": "string"}}},
   "action": {"type": "object", "required": ["action", "resource", "address", "reason", "before", "after",
                                             "before_text", "after_text"],
              "additionalProperties": False,
              "properties": {
                  "action": {"enum": ["create", "update", "replace", "delete", "no-op"]},
                  "resource": {"enum": ["cgroup", "map", "prog", "attach", "pin", "qdisc", "access"]},
                  "address": {"type": "string", "minLength": 1}, "reason": {"type": "string"},
                  "before": state, "after": state,
                  "before_text": nullable("string"), "after_text": nullable("string"),
                  "transition": {"type": "string"},
                  "entries": {"type": "array", "items": {
                      "type": "object", "required": ["key", "old", "new"], "additionalProperties": False,
                      "properties": {"key": entry_bytes, "old": {"oneOf": [entry_bytes, {"type": "null"}]},
                                     "new": entry_bytes, "key_uint": {"type": "integer", "minimum": 0},
                                     "old_uint": {"type": "integer", "minimum": 0},
                                     "new_uint": {"type": "integer", "minimum": 0}}}}}}})

s("validate", "bpfdeploy validate --json", reply({
    "valid": {"const": True}, "deployment": {"type": "string"}, "pin_root": {"type": "string"},
    "programs": {"type": "integer"}, "maps": {"type": "integer"}, "attachments": {"type": "integer"},
    "diagnostics": DIAGS}, ["valid", "deployment", "pin_root", "programs", "maps", "attachments", "diagnostics"]))

s("build", "bpfdeploy build FILE --out DIR --json", reply({
    "directory": {"type": "string"}, "index": {"type": "string"}, "deployment": {"type": "string"},
    "manifest_sha256": SHA256, "bpfdeploy_version": {"type": "string"}, "signature": nullable("string"),
    "objects": {"type": "array", "items": {
        "type": "object", "required": ["object", "file", "kind", "sha256", "build_digest", "built"],
        "additionalProperties": False,
        "properties": {"object": {"type": "string"}, "file": {"type": "string"}, "kind": {"enum": ["source", "file"]},
                       "sha256": SHA256, "build_digest": SHA256, "built": {"type": "boolean"}}}}},
    ["directory", "index", "deployment", "manifest_sha256", "bpfdeploy_version", "signature", "objects"]))

plan_inner = {"allOf": [{"$ref": "plan.schema.json"}]}
s("apply", "bpfdeploy apply --json and bpfdeploy destroy --json", reply({
    "plan": {"$ref": "plan.schema.json"}, "applied": {"type": "boolean"},
    "done": STR_LIST, "warnings": STR_LIST, "mutations": {"type": "integer", "minimum": 0},
    "commands": {"type": "array", "items": STR_LIST},
    "partial": {"description": "Applied, but an optional attachment is missing (exit 5)", "type": "boolean"},
    "skipped": {"description": "Optional attachments not made (left out by the plan or refused by the kernel)",
                "type": "array", "items": {"$ref": "plan.schema.json#/$defs/skipped"}}}, ["plan", "applied"]))

s("apply-all", "bpfdeploy apply --all DIR --json", reply({
    "directory": {"type": "string"}, "exit_code": {"type": "integer"},
    "failed": {"description": "Manifests that failed (exit code other than 0 and 5)", **STR_LIST},
    "deployments": {"type": "array", "items": {
        "description": "One manifest, in name order: the reply of apply FILE (plan, applied, ...) or its error",
        "type": "object", "required": ["manifest", "exit_code", "status"],
        "properties": {"manifest": {"type": "string"}, "exit_code": {"type": "integer"},
                       "status": {"enum": ["changed", "in sync", "partial", "failed", "locked", "crashed"]},
                       "deployment": {"type": "string"}, "plan": {"$ref": "plan.schema.json"},
                       "error": {"type": "string"}, "diagnostics": DIAGS},
        "additionalProperties": True}}}, ["directory", "exit_code", "failed", "deployments"]))

STATE_ENUM = {"enum": ["in sync", "missing", "drifted", "unknown"]}
s("status", "bpfdeploy status FILE --json", reply({
    "deployment": {"type": "string"}, "pin_root": {"type": "string"}, "healthy": {"type": "boolean"},
    "deployed": {"type": "boolean"},
    "summary": {"type": "object", "additionalProperties": {"type": "integer"}},
    "stats_window_seconds": nullable("number"),
    "programs": {"type": "array", "items": {"type": "object", "required": ["name", "id", "type", "state"],
                                            "properties": {"name": {"type": "string"}, "id": nullable("integer"),
                                                           "type": {"type": "string"}, "state": STATE_ENUM}}},
    "maps": {"type": "array", "items": {"type": "object", "required": ["name", "id", "geometry", "state"],
                                        "properties": {"name": {"type": "string"}, "id": nullable("integer"),
                                                       "geometry": {"type": "string"}, "state": STATE_ENUM}}},
    "attachments": {"type": "array", "items": {"type": "object", "required": ["name", "program", "hook", "state"],
                                               "properties": {"name": {"type": "string"},
                                                              "program": {"type": "string"},
                                                              "hook": {"type": "string"}, "state": STATE_ENUM}}},
    "not_in_manifest": STR_LIST, "conflicts": STR_LIST,
    "errors": {**STR_LIST, "description": "Errors that stop every plan (a symlink or a pin the record does not list in the pin root, an overlapping pin root): states are unknown until they are fixed."}},
    ["deployment", "pin_root", "healthy", "deployed", "summary", "programs", "maps", "attachments", "not_in_manifest",
     "conflicts"]))

s("status-list", "bpfdeploy status --json (every deployment on the host)", reply({
    "deployments": {"type": "array", "items": {
        "type": "object", "required": ["name", "pin_root", "manifest", "programs", "links", "maps", "exists"],
        "properties": {"name": {"type": "string"}, "pin_root": {"type": "string"}, "manifest": {"type": "string"},
                       "programs": {"type": "integer"}, "links": {"type": "integer"}, "maps": {"type": "integer"},
                       "exists": {"type": "boolean"}}}}}, ["deployments"]))

s("dump", "bpfdeploy dump DEPLOYMENT MAP --json", reply({
    "deployment": {"type": "string"}, "map": {"type": "string"},
    "entries": {"type": "array", "items": {"type": "object"}}}, ["deployment", "map", "entries"]))

s("probe-features", "bpfdeploy probe features --json (sections cut down by --program-types, --map-types, --helpers, --config)",
  reply({"format": {"type": ["string", "integer"], "description": "the probe cache's own format"},
         "kernel": {"type": "object", "required": ["release"],
                    "properties": {"release": {"type": "string"},
                                   "version": {"type": ["array", "null"], "items": {"type": "integer"}}}},
         "probed_at": {"type": "string"}, "from_cache": {"type": "boolean"},
         "program_types": {"type": "object"}, "map_types": {"type": "object"}, "helpers": {"type": "object"},
         "unreliable": {"type": "array", "items": {"type": "object", "required": ["subject"]}}},
        ["format", "kernel", "probed_at", "from_cache", "unreliable"]))

s("probe-check", "bpfdeploy probe check FILE --json", reply({
    "fits": {"type": "boolean"}, "kernel": {"type": "string"}, "probed_at": {"type": "string"},
    "from_cache": {"type": "boolean"}, "diagnostics": DIAGS}, ["fits", "kernel", "probed_at", "from_cache", "diagnostics"]))

s("error", "Any command's --json reply when it fails (exit code 1, 4, ...)", reply({
    "error": {"type": "string"}, "exit_code": {"type": "integer", "minimum": 1}, "diagnostics": DIAGS,
    "failed_step": nullable("string"), "detail": nullable("string"), "rolled_back": {"type": "boolean"},
    "rollback_failures": STR_LIST}, ["error", "exit_code", "diagnostics"]))

s("metrics", "bpfdeploy metrics --json (one scrape, no server)", reply({
    "deployments": STR_LIST,
    "unprepared": {"type": "array", "items": {"type": "object", "required": ["manifest", "error"],
                                              "properties": {"manifest": {"type": "string"},
                                                             "error": {"type": "string"}}}},
    "families": {"type": "array", "items": {
        "type": "object", "required": ["name", "type", "help", "samples"], "additionalProperties": False,
        "properties": {"name": {"type": "string", "pattern": "^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
                       "type": {"enum": ["counter", "gauge", "info", "untyped", "summary", "histogram", "stateset",
                                         "gaugehistogram", "unknown"]},
                       "help": {"type": "string"},
                       "samples": {"type": "array", "items": {
                           "type": "object", "required": ["name", "labels", "value"], "additionalProperties": False,
                           "properties": {"name": {"type": "string"},
                                          "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                          "value": {"type": "number"}}}}}}}},
    ["deployments", "unprepared", "families"]))

for command, one in (("validate", "a validate reply"), ("plan", "a plan reply")):
    s(f"{command}-many", f"bpfdeploy {command} --json with several manifests: one result per manifest, in order",
      reply({"results": {"type": "array", "items": {
          "type": "object", "required": ["manifest", "exit_code"],
          "description": f"{one} (or an error reply) without format_version, plus the manifest and its exit code",
          "properties": {"manifest": {"type": "string"}, "exit_code": {"type": "integer", "minimum": 0},
                         "error": {"type": "string"}, "diagnostics": DIAGS}}}}, ["results"]))
