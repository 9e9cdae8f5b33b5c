"""Run the fewshot-serve web app: `python app.py` (then open http://127.0.0.1:7860).

With no --model it serves every model file in models/ behind a menu: the photo model first (what most
people upload), then the handwriting model, then the rest.
"""

import argparse
from pathlib import Path

from fewshot_serve.web_app import launch

MODELS = Path(__file__).resolve().parent / "models"
FIRST = [MODELS / "photos-resnet12.safetensors", MODELS / "omniglot-conv4.safetensors"]


def shipped_models() -> list[Path]:
    first = [path for path in FIRST if path.exists()]
    return first + sorted(p for p in MODELS.glob("*.safetensors") if p not in first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append", default=None,
                        help="a fewshot-serve .safetensors model file; repeat to offer several (default: models/*)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    args = parser.parse_args()
    launch(args.model or shipped_models(), host=args.host, port=args.port, share=args.share)


if __name__ == "__main__":
    main()
