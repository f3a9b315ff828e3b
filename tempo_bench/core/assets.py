"""Where the shipped toy checkpoints live inside the package (what `model.path: toy` and friends
resolve to, and where `tempo-bench toy-model build` writes by default)."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SHIPPED_DIR = ASSETS / "toy_model"  # the pretrained policy
RLVR_DIR = ASSETS / "toy_rlvr"  # actor/ and critic/ after RLVR
CRITIC_BASE_DIR = ASSETS / "toy_critic_base"  # the critic's backbone (the symmetric regime)
VERIFIER_DIR = ASSETS / "toy_verifier"  # the verification-corpus backbone (the verifier regime)
