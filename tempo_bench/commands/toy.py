"""`tempo-bench toy-model build`: the embedded tiny model, built deterministically; `tempo-bench
toy-model random`: a random-weight model with its tokenizer, for backend checks."""

from __future__ import annotations

import yaml

from tempo_bench.core.errors import ConfigError
from tempo_bench.core.tracking import ensure_writable
from tempo_bench.experiments.probe import report
from tempo_bench.toy.build import build_and_score, build_rlvr, build_verifier
from tempo_bench.toy.model import (
    CRITIC_BASE_DIR,
    RLVR_DIR,
    SHIPPED_DIR,
    VERIFIER_DIR,
    ToyModelSpec,
    critic_backbone_spec,
)
from tempo_bench.toy.random_model import ARCHITECTURES, build_random_model
from tempo_bench.toy.rlvr import RLVRSpec
from tempo_bench.toy.verifier import VerifierSpec


def add_parser(sub) -> None:
    toy = sub.add_parser("toy-model", help="the embedded tiny model")
    toy_sub = toy.add_subparsers(dest="toy_command", required=True)
    build = toy_sub.add_parser(
        "build", help="build the toy starting point deterministically on one core: pretrain the policy (about 4 "
        "minutes) and the critic's backbone (about 13), RLVR with PPO and the critic on the labeled pool, "
        "then measure the result (tempo-bench probe)")
    build.add_argument("--stage", choices=["all", "pretrain", "critic-pretrain", "verifier-pretrain", "rlvr"],
                       default="all",
                       help="pretrain: the policy's base; critic-pretrain: the critic's larger backbone on the "
                       "policy's corpus (the symmetric regime); verifier-pretrain: a verifier backbone on the "
                       "verification corpus (the verifier regime, about 8 minutes); rlvr: the RLVR stage "
                       "(all of them by default)")
    build.add_argument("--out", help="folder for toy_model/, toy_critic_base/ and toy_rlvr/ (default: the "
                       "package's assets, what the presets load)")
    build.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a ToyModelSpec field (e.g. steps=200), prefixed rlvr. an RLVRSpec field "
                       "(e.g. rlvr.steps=50), prefixed verifier. a VerifierSpec field (e.g. "
                       "verifier.error_kinds=[chain,slip])")
    build.add_argument("--quiet", action="store_true")
    build.set_defaults(func=cmd_toy_build)

    rand = toy_sub.add_parser(
        "random", help="write a random-weight Llama or Qwen3 with the toy's tokenizer (seconds): a model to check "
        "a backend on shapes the toy lacks, e.g. vLLM's CPU build, which has no kernel for the toy's head_dim 16")
    rand.add_argument("--out", required=True, help="folder to write the model to (use it as model.path)")
    rand.add_argument("--arch", choices=ARCHITECTURES, default="llama")
    rand.add_argument("--head-dim", type=int, default=64, help="attention head size (default 64)")
    rand.add_argument("--layers", type=int, default=2)
    rand.add_argument("--heads", type=int, default=2, help="attention heads (hidden size = heads x head_dim)")
    rand.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: --heads)")
    rand.add_argument("--max-positions", type=int, default=512, help="the model's context (max_position_embeddings)")
    rand.add_argument("--seed", type=int, default=0)
    rand.set_defaults(func=cmd_toy_random)


_SPEC_PREFIXES = ("rlvr.", "verifier.")


def _spec_overrides(overrides: list[str], prefix: str, cls) -> dict:
    """The --set assignments of one build spec: ``prefix`` 'rlvr.', 'verifier.' or '' (the
    policy's ToyModelSpec: keys without a known prefix)."""
    fields = {}
    for assignment in overrides:
        key, _, raw = assignment.partition("=")
        owner = next((p for p in _SPEC_PREFIXES if key.startswith(p)), "")
        if owner != prefix:
            continue
        name = key[len(prefix):]
        if name not in cls.__dataclass_fields__:
            raise ConfigError(f"unknown {cls.__name__} field {name!r} (--set {prefix}{name}); allowed: "
                              f"{', '.join(cls.__dataclass_fields__)}")
        fields[name] = _typed(cls, name, yaml.safe_load(raw))
    return fields


def _spec(cls, overrides: list[str], prefix: str):
    try:
        return cls(**_spec_overrides(overrides, prefix, cls))
    except ValueError as err:  # the spec's own validation (VerifierSpec names field and allowed values)
        raise ConfigError(str(err)) from None


def _typed(cls, name: str, value):
    """A --set value as the field's type (YAML reads 2e-3 as a string): a clear error otherwise."""
    default = cls.__dataclass_fields__[name].default
    if isinstance(default, bool) or default is None or isinstance(default, str):
        return value
    if isinstance(default, (int, float)):
        try:
            number = float(value) if isinstance(default, float) else int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{cls.__name__}.{name} takes a number, got {value!r}") from None
        return number
    if isinstance(default, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{cls.__name__}.{name} takes a list like [1,2,3], got {value!r}")
        return tuple(value)
    return value


def cmd_toy_build(args) -> int:
    spec = _spec(ToyModelSpec, args.overrides, "")
    rlvr_spec = _spec(RLVRSpec, args.overrides, "rlvr.")
    verifier_spec = _spec(VerifierSpec, args.overrides, "verifier.")
    root = ensure_writable(args.out) if args.out else None
    base = root / "toy_model" if root else SHIPPED_DIR
    critic_base = root / "toy_critic_base" if root else CRITIC_BASE_DIR
    pretrain = [("pretrain", base, spec), ("critic-pretrain", critic_base, critic_backbone_spec())]
    for stage, out, stage_spec in pretrain:
        if args.stage in ("all", stage):
            manifest = build_and_score(out, stage_spec, show_progress=not args.quiet)
            print(f"wrote {out} ({manifest['num_parameters']:,} parameters, weights {manifest['weights_hash']})")
            for name, value in manifest["scores"].items():
                print(f"  {name:<24} {value}")
    if args.stage in ("all", "verifier-pretrain"):
        out = root / "toy_verifier" if root else VERIFIER_DIR
        manifest = build_verifier(out, verifier_spec, show_progress=not args.quiet)
        print(f"wrote {out} ({manifest['num_parameters']:,} parameters, weights {manifest['weights_hash']}); "
              f"covers {manifest['covers']}")
        for name, value in manifest["scores"].items():
            print(f"  {name:<24} {value}")

        print(f"probe of the {manifest['probe_preset']} preset with this verifier as its critic:")
        print(report(manifest["probe"]))
    if args.stage in ("all", "rlvr"):

        out = root / "toy_rlvr" if root else RLVR_DIR
        manifest = build_rlvr(out, rlvr_spec, base_dir=base, critic_base_dir=critic_base,
                              show_progress=not args.quiet)
        print(f"wrote {out}: actor {manifest['actor_weights_hash']}, critic {manifest['critic_weights_hash']} "
              f"({manifest['build_seconds']:.0f} s)")
        print(report(manifest["probe"]))
    return 0


def cmd_toy_random(args) -> int:
    sizes = {"--head-dim": args.head_dim, "--layers": args.layers, "--heads": args.heads,
             "--max-positions": args.max_positions}
    if args.kv_heads is not None:
        sizes["--kv-heads"] = args.kv_heads
    bad = [f"{flag} {value}" for flag, value in sizes.items() if value < 1]
    if bad:
        raise ConfigError(f"toy-model random: sizes must be at least 1, got {', '.join(bad)}")
    if args.kv_heads is not None and args.heads % args.kv_heads:
        raise ConfigError(f"toy-model random: --heads {args.heads} must be a multiple of --kv-heads {args.kv_heads}")
    out = build_random_model(ensure_writable(args.out), args.arch, args.head_dim, args.layers, args.heads,
                             args.kv_heads, args.max_positions, args.seed)
    print(f"wrote {out}: random {args.arch}, {args.layers} layers, {args.heads} heads of {args.head_dim} "
          f"(seed {args.seed}); use it as --set model.path={out}")
    return 0
