"""Run the fewshot-serve web app: `python app.py` (then open http://127.0.0.1:7860).

With no --model it serves every model file in models/ behind a menu: the photo model first (what most
people upload: EfficientNet-Lite0, ImageNet-trained), then the handwriting model, then the rest.
"""

import argparse
from pathlib import Path

from fewshot_serve.serving.auth import AUTH_ENV, Credentials
from fewshot_serve.serving.web_app import CONCURRENCY, QUEUE_SIZE, launch

MODELS = Path(__file__).resolve().parent / "models"
FIRST = [MODELS / "photos-efficientnet-lite0.safetensors", MODELS / "omniglot-resnet12.safetensors",
         MODELS / "text-minilm.safetensors", MODELS / "text-minilm-sentiment.safetensors"]


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
    parser.add_argument("--auth-file", type=Path, default=None,
                        help=f"require a login: lines 'user:password' or 'user:pbkdf2_sha256$...' (from "
                             f"`fewshot-serve hash-password USER`); ${AUTH_ENV}=user:password[,...] works too")
    parser.add_argument("--no-auth", action="store_true",
                        help="serve a non-loopback --host or --share without a login (refused otherwise)")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="requests run at once per event")
    parser.add_argument("--queue-size", type=int, default=QUEUE_SIZE,
                        help="requests that may wait; more are refused at once with 'Queue is full'")
    parser.add_argument("--bf16", action="store_true",
                        help="classify in bfloat16 where the CPU/GPU has it natively (about 4x faster on AMX "
                             "CPUs; accuracy measured in benchmarks/bf16_accuracy.py)")
    args = parser.parse_args()
    try:
        credentials = Credentials.load(args.auth_file)
        launch(args.model or shipped_models(), host=args.host, port=args.port, share=args.share,
               credentials=credentials, allow_anonymous=args.no_auth, concurrency=args.concurrency,
               queue_size=args.queue_size, bf16=args.bf16)
    except ValueError as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
