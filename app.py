"""Run the fewshot-serve web app: `python app.py` (then open http://127.0.0.1:7860)."""

import argparse
from pathlib import Path

from fewshot_serve.web_app import launch

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "omniglot-conv4.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a fewshot-serve .safetensors model file")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    args = parser.parse_args()
    launch(args.model, host=args.host, port=args.port, share=args.share)


if __name__ == "__main__":
    main()
