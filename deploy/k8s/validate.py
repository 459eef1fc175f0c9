#!/usr/bin/env python3
"""Renders the Kustomize base in deploy/k8s/base and validates every manifest against the
Kubernetes JSON schemas shipped by the `kubernetes-validate` package (offline, strict).

    python3 deploy/k8s/validate.py [--base DIR] [--k8s-version V ...] [--kubectl auto|require|off] [--json]

Rendering: no kustomize is needed. The base uses only `resources` (plain files), `namespace` and
`images` (newName / newTag / digest), which this script applies itself; any other kustomization
field is refused, so the base cannot outgrow the renderer unnoticed. When `kubectl` is on PATH (or
with `--kubectl require`), `kubectl kustomize` renders the base too and both renderings must be the
same set of objects.

Validation: every rendered object, against each Kubernetes version given (default: 1.30, the
oldest the base supports, its preStop `sleep` action being beta from 1.30 on, and 1.37), in strict
mode (unknown fields are errors); and container resources against Kubernetes' quantity grammar,
which the JSON schemas leave unchecked (any string passes them).

Exit status 0 when everything rendered and validated; 1 otherwise, with one line per problem on
stderr. `--json` prints the rendered objects (and what was checked) on stdout, for
tests/tests/k8s_manifests.rs.
"""

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys

import yaml

try:
    import kubernetes_validate
except ImportError:  # pragma: no cover - told to the user
    sys.exit("deploy/k8s/validate.py needs the kubernetes-validate package: "
             "python3 -m pip install kubernetes-validate==1.37.0")

DEFAULT_VERSIONS = ["1.30.0", "1.37.0"]

# The kustomization fields this renderer applies; anything else is refused.
SUPPORTED_FIELDS = {"apiVersion", "kind", "namespace", "resources", "images"}
SUPPORTED_IMAGE_FIELDS = {"name", "newName", "newTag", "digest"}

# Kinds without a namespace (the namespace transformer leaves them alone); kinds whose other fields
# name namespaces (which kustomize would also rewrite) are refused.
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
    "CustomResourceDefinition", "PriorityClass", "IngressClass", "RuntimeClass",
    "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration",
}
UNSUPPORTED_KINDS = {"RoleBinding", "ClusterRoleBinding", "ValidatingWebhookConfiguration",
                     "MutatingWebhookConfiguration", "APIService"}


# Kubernetes' resource.Quantity grammar: the JSON schemas accept any string for a quantity.
QUANTITY = re.compile(r"^[+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
                      r"(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")


def bad_quantities(obj):
    """Container resources whose values are not Kubernetes quantities."""
    out = []
    for spec in pod_specs(obj):
        for key in ("initContainers", "containers"):
            for c in spec.get(key) or []:
                for kind, values in (c.get("resources") or {}).items():
                    for res, q in (values or {}).items():
                        if not QUANTITY.match(str(q)):
                            out.append(f"container {c.get('name')}: resources.{kind}.{res} = {q!r} "
                                       "is not a quantity")
    return out


class RenderError(Exception):
    pass


def load_yaml_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def pod_specs(obj):
    """The pod specs inside an object (workloads, pods, cron jobs)."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return [spec]
    if kind in {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job", "ReplicationController"}:
        return [((spec.get("template") or {}).get("spec")) or {}]
    if kind == "CronJob":
        job = (spec.get("jobTemplate") or {}).get("spec") or {}
        return [((job.get("template") or {}).get("spec")) or {}]
    return []


def split_image(image):
    """`name[:tag][@digest]` -> (name, tag, digest); a registry port is not a tag."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    tag = None
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        image, tag = image[:colon], image[colon + 1:]
    return image, tag, digest


def apply_images(obj, images):
    for spec in pod_specs(obj):
        for key in ("initContainers", "containers", "ephemeralContainers"):
            for c in spec.get(key) or []:
                name, tag, digest = split_image(c.get("image", ""))
                for rule in images:
                    if rule["name"] != name:
                        continue
                    new = rule.get("newName", name)
                    if "digest" in rule:
                        c["image"] = f"{new}@{rule['digest']}"
                    elif "newTag" in rule:
                        c["image"] = f"{new}:{rule['newTag']}"
                    else:
                        c["image"] = new + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
                    break


def render(base):
    """The objects of the kustomization in `base`, transformed as kustomize would for the subset."""
    kpath = os.path.join(base, "kustomization.yaml")
    docs = load_yaml_docs(kpath)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise RenderError(f"{kpath}: one mapping expected")
    k = docs[0]
    extra = sorted(set(k) - SUPPORTED_FIELDS)
    if extra:
        raise RenderError(
            f"{kpath}: field(s) {', '.join(extra)} not supported by this renderer "
            f"(it applies only {', '.join(sorted(SUPPORTED_FIELDS))}): render with kustomize instead")
    if k.get("kind") != "Kustomization":
        raise RenderError(f"{kpath}: kind must be Kustomization")
    images = k.get("images") or []
    for rule in images:
        bad = sorted(set(rule) - SUPPORTED_IMAGE_FIELDS)
        if bad or "name" not in rule:
            raise RenderError(f"{kpath}: images entry {rule!r}: only {sorted(SUPPORTED_IMAGE_FIELDS)}")
    namespace = k.get("namespace")
    out = []
    for res in k.get("resources") or []:
        path = os.path.join(base, res)
        if not os.path.isfile(path):
            raise RenderError(f"{kpath}: resource {res!r} is not a file here (directories and "
                              "remote bases need kustomize)")
        for obj in load_yaml_docs(path):
            obj = copy.deepcopy(obj)
            kind = obj.get("kind")
            if kind in UNSUPPORTED_KINDS:
                raise RenderError(f"{path}: kind {kind} is not supported by this renderer")
            if namespace and kind not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = namespace
            apply_images(obj, images)
            obj["_source"] = res
            out.append(obj)
    return k, out


def key(obj):
    m = obj.get("metadata") or {}
    return (obj.get("apiVersion"), obj.get("kind"), m.get("namespace"), m.get("name"))


def compare_with_kubectl(base, ours):
    """Renders with `kubectl kustomize` and compares; returns a list of differences."""
    proc = subprocess.run(["kubectl", "kustomize", base], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return [f"kubectl kustomize {base} failed: {proc.stderr.strip()}"]
    theirs = {key(o): o for o in yaml.safe_load_all(proc.stdout) if o is not None}
    mine = {key(o): {k: v for k, v in o.items() if k != "_source"} for o in ours}
    problems = []
    for k in sorted(set(mine) | set(theirs), key=str):
        if k not in theirs:
            problems.append(f"{k}: rendered here, not by kubectl kustomize")
        elif k not in mine:
            problems.append(f"{k}: rendered by kubectl kustomize, not here")
        elif mine[k] != theirs[k]:
            a = json.dumps(mine[k], sort_keys=True, indent=1).splitlines()
            b = json.dumps(theirs[k], sort_keys=True, indent=1).splitlines()
            diff = [f"  here: {x}  kubectl: {y}" for x, y in zip(a, b) if x != y][:5]
            problems.append(f"{k}: differs from kubectl kustomize's rendering\n" + "\n".join(diff))
    return problems


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=os.path.join(here, "base"))
    ap.add_argument("--k8s-version", action="append", dest="versions",
                    help=f"Kubernetes version to validate against (repeat; default {DEFAULT_VERSIONS})")
    ap.add_argument("--kubectl", choices=["auto", "require", "off"], default="auto",
                    help="also render with `kubectl kustomize` and compare (auto: when on PATH)")
    ap.add_argument("--json", action="store_true", help="print the rendered objects as JSON on stdout")
    args = ap.parse_args()
    versions = args.versions or DEFAULT_VERSIONS
    problems = []

    try:
        kustomization, objs = render(args.base)
    except (RenderError, OSError, yaml.YAMLError) as e:
        sys.exit(f"render: {e}")
    if not objs:
        sys.exit("render: no objects")

    validated = []
    for obj in objs:
        data = {k: v for k, v in obj.items() if k != "_source"}
        where = f"{obj['_source']}: {obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
        problems += [f"{where}: {q}" for q in bad_quantities(data)]
        for v in versions:
            try:
                used = kubernetes_validate.validate(data, v, strict=True)
                validated.append({"object": where, "requested": v, "schema": used})
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                problems.append(f"{where}: invalid for Kubernetes {v} at {path or '/'}: {e.message}")
            except Exception as e:  # SchemaNotFoundError, VersionNotSupportedError, ...
                problems.append(f"{where}: cannot validate for Kubernetes {v}: {e}")

    kubectl = "off"
    if args.kubectl != "off":
        if shutil.which("kubectl"):
            diff = compare_with_kubectl(args.base, objs)
            problems += diff
            kubectl = "same" if not diff else "different"
        elif args.kubectl == "require":
            problems.append("--kubectl require: kubectl is not on PATH")
        else:
            kubectl = "absent"

    for p in problems:
        print(p, file=sys.stderr)
    if args.json:
        json.dump({
            "kustomization": kustomization,
            "objects": objs,
            "versions": versions,
            "validated": validated,
            "kubectl_kustomize": kubectl,
            "kubernetes_validate": kubernetes_validate.__version__,
        }, sys.stdout, indent=1)
        print()
    else:
        print(f"{len(objs)} objects rendered from {args.base}; "
              f"{len(validated)} validations passed (strict, Kubernetes {', '.join(versions)}, "
              f"kubernetes-validate {kubernetes_validate.__version__}); "
              f"kubectl kustomize: {kubectl}; {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
