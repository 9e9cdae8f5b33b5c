"""Each benchmark script runs in a tiny configuration, so none of them rots."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
FOMAML_MODEL = ROOT / "models" / "omniglot-conv4-fomaml.safetensors"  # the benchmarks' default

import adapt_latency  # noqa: E402
import first_order_kernels  # noqa: E402
import frozen_part_runtimes  # noqa: E402
import inplace_activations  # noqa: E402
import pool_order  # noqa: E402
import serve_throughput  # noqa: E402
import text_latency  # noqa: E402
import train_throughput  # noqa: E402

pytestmark = pytest.mark.slow  # servers, browsers, subprocesses or real data: not in the quick tier


def test_adapt_latency_smoke(capsys):
    report = adapt_latency.run(FOMAML_MODEL, repeats=2, device="cpu", settings=((3, 1),))
    entry = report["settings"]["3-way 1-shot"]
    # peers must also agree with ours to be timed, on our layers and on standard ones
    assert {"ours", "textbook", "textbook, standard layers", "gflop", "bound_ms"} <= set(entry)
    adapt_latency.print_table(report)
    assert "ours / bound" in capsys.readouterr().out


def test_first_order_kernels_smoke(capsys):
    from fewshot_serve.networks import conv4, norms

    switches = (norms.using_first_order_kernels, conv4.using_first_order_kernels)
    report = first_order_kernels.run(FOMAML_MODEL, repeats=1, settings=((3, 1),))  # answers checked equal inside
    assert set(report["settings"]["3-way 1-shot"]) == set(first_order_kernels.VARIANTS)
    assert (norms.using_first_order_kernels, conv4.using_first_order_kernels) == switches  # switched back
    first_order_kernels.print_table(report)
    assert "channels-last" in capsys.readouterr().out


def test_pool_order_smoke(capsys):
    from fewshot_serve.networks import conv4

    report = pool_order.run(FOMAML_MODEL, repeats=1, settings=((3, 1),))  # answers checked equal inside
    assert set(report["settings"]["3-way 1-shot"]) == set(pool_order.VARIANTS)
    assert conv4.relu_and_pool is pool_order.POOL_FIRST  # switched back
    pool_order.print_table(report)
    assert "pool, then ReLU" in capsys.readouterr().out


def test_inplace_activations_smoke(tmp_path, capsys):
    from test_resnet12 import recipe_for, tiny_resnet

    from fewshot_serve.files.model_file import save_model
    from fewshot_serve.networks.resnet12 import FrozenBlock

    network = tiny_resnet(norm="fixed", adapt_from=4, dtype=torch.float32)
    save_model(tmp_path / "photos.safetensors", network, recipe_for(network))
    report = inplace_activations.run(tmp_path / "photos.safetensors", repeats=1, settings=((3, 2),))  # checked equal
    assert set(report["settings"]["3-way 2-shot"]) == set(inplace_activations.VARIANTS)
    assert FrozenBlock.forward is inplace_activations.IN_PLACE  # switched back
    inplace_activations.print_table(report)
    assert "in place (now)" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["resnet12", "ensemble"])
def test_adapt_latency_photo_smoke(tmp_path, capsys, kind):
    from test_ensemble import tiny_ensemble
    from test_resnet12 import recipe_for, tiny_resnet

    from fewshot_serve.files.model_file import save_model

    network = (tiny_resnet(norm="fixed", adapt_from=4, dtype=torch.float32) if kind == "resnet12"
               else tiny_ensemble(dtype=torch.float32)[0])
    save_model(tmp_path / "photos.safetensors", network, recipe_for(network))
    runs = [adapt_latency.run_alone(tmp_path / "photos.safetensors", repeats=2, device="cpu", settings=((3, 2),),
                                    runtime=runtime) for runtime in ("torch", "onnxruntime")]
    assert set(runs[0]["settings"]["3-way 2-shot"]) == {"adapt + classify", "adapt", "classify", "assessment",
                                                        "assessment / adapt"}
    assert adapt_latency.shipped_variants(tmp_path / "photos.safetensors", "cpu", bf16=False) == [
        ("torch", False), ("onnxruntime", False)]
    adapt_latency.print_alone_table(runs[1])
    adapt_latency.print_ratios(*runs)
    out = capsys.readouterr().out
    assert "frozen part in onnxruntime" in out and "torch float32 / onnxruntime: adapt + classify" in out


@pytest.mark.parametrize("contestant", ["ours-vmap", "ours-loop"])
@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "reptile"])
def test_train_throughput_smoke(contestant, algorithm):
    row = train_throughput.measure(contestant, algorithm, ways=3, shots=1, queries=2, tasks=2, repeats=1,
                                   device="cpu", size=16)
    assert row["tasks_per_s"] > 0 and row["max_relative_difference"] < 1e-4


@pytest.mark.parametrize("contestant", ["higher", "higher-standard"])
def test_train_throughput_peer_smoke(contestant):
    pytest.importorskip("higher", reason="higher is a benchmark-only peer (benchmarks/requirements-peers.txt)")
    row = train_throughput.measure(contestant, "maml", ways=3, shots=1, queries=2, tasks=2, repeats=1,
                                   device="cpu", size=16)
    assert row["max_relative_difference"] < 1e-4


def test_train_throughput_alternates_rounds_of_isolated_runs(tmp_path, monkeypatch, capsys):
    out = tmp_path / "train.json"
    monkeypatch.setattr(sys, "argv", ["train_throughput.py", "--settings", "3x1", "--algorithms", "reptile",
                                      "--contestants", "ours-loop", "--rounds", "2", "--meta-batch", "2", "--queries",
                                      "2", "--repeats", "1", "--image-size", "16", "--out", str(out)])
    train_throughput.main()
    row = json.loads(out.read_text())["results"]["3x1 reptile"]["ours-loop"]
    assert len(row["tasks_per_s"]) == 2 and row["max_relative_difference"] == 0
    assert "1.00x" in capsys.readouterr().out  # ours-loop over itself


def test_serve_throughput_smoke():
    import fewshot_serve

    model = fewshot_serve.load(FOMAML_MODEL, device="cpu")
    row = serve_throughput.concurrency(model, clients=2, requests=1, ways=3, queries=4)
    assert row["mismatches"] == 0 and row["tasks_per_s"] > 0
    assert serve_throughput.batched_adaptation(model, tasks=2, ways=3, queries=4, repeats=1)["speedup"] > 0


def test_adapt_latency_refuses_a_model_the_peers_cannot_reproduce():
    with pytest.raises(ValueError, match="MAML\\+\\+ options"):
        adapt_latency.run(ROOT / "models" / "omniglot-conv4.safetensors", repeats=1, device="cpu", settings=((3, 1),))


def test_distributed_throughput_smoke(glyph_tree):
    import distributed_throughput

    report = distributed_throughput.run(2, 2, "fomaml", ["--dataset", "folder", "--data-root", str(glyph_tree),
                                                         "--image-size", "16", "--channels", "1", "--ways", "3"])
    assert len(report["tasks_per_s"]) == 3 and all(rate > 0 for rate in report["tasks_per_s"].values())


def test_bf16_accuracy_smoke(colour_model):
    import bf16_accuracy

    from fewshot_serve.devices import bf16_available

    if not bf16_available(torch.device("cpu")):
        pytest.skip("this CPU has no native bfloat16")
    report = bf16_accuracy.run(colour_model, ways=3, shots=1, episodes=3, queries=2,
                               data_root=colour_model.parent / "classes")
    assert report["predictions"] == 18 and 0 <= report["bfloat16"]["mean"] <= 1
    assert report["difference"]["mean"] == pytest.approx(report["bfloat16"]["mean"] - report["float32"]["mean"])


def test_onnx_classify_smoke(capsys):
    import onnx_classify

    report = onnx_classify.run([FOMAML_MODEL], repeats=1, ways=2, shots=1)  # answers checked equal inside
    entry = report["models"][FOMAML_MODEL.name]
    assert set(onnx_classify.CONTESTANTS) <= set(entry) and entry["handover_ms"] > 0
    onnx_classify.print_table(report)
    assert "break-even" in capsys.readouterr().out


def test_frozen_part_runtimes_smoke(tmp_path):
    from test_efficientnet_lite import recipe_for, tiny_lite

    from fewshot_serve.files.model_file import save_model

    network = tiny_lite(dtype=torch.float32).float()
    save_model(tmp_path / "lite.safetensors", network, recipe_for(network))
    # onnxruntime's features are checked against torch's inside
    report = frozen_part_runtimes.run(tmp_path / "lite.safetensors", repeats=1, batches=(3,))
    assert {"torch float32", "onnxruntime float32"} <= set(report["batches"]["3"])


def test_text_latency_smoke(tmp_path, capsys):
    pytest.importorskip("tokenizers")
    from test_text import save_tiny_text_model

    save_tiny_text_model(tmp_path / "tiny-text.safetensors")
    report = text_latency.main(["--model", str(tmp_path / "tiny-text.safetensors"), "--repeats", "2",
                                "--out", str(tmp_path / "text.json")])
    assert {"adapt + classify", "adapt", "classify"} <= set(report)
    assert json.loads((tmp_path / "text.json").read_text())["setting"] == "5-way 5-shot, 75 queries"
    assert "adapt + classify" in capsys.readouterr().out
