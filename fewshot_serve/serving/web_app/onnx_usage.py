"""The few lines that use an exported classifier elsewhere, shown beside the page's Export button.

Kept as code that runs (tests/test_page.py executes it on a real export), so it cannot go stale.
"""

ONNX_USAGE_CODE = """\
# with fewshot-serve installed; without torch: pip install --no-deps -e . onnxruntime numpy pillow (in its repository)
from fewshot_serve import OnnxClassifier

classifier = OnnxClassifier("fewshot-classifier.onnx")
print(classifier.labels)
print(classifier.classify(["photo.jpg"]))   # [{"class a": 0.91, "class b": 0.09}]
"""

ONNX_USAGE = ("Use the file with onnxruntime (the labels and preprocessing are inside it):\n\n"
              f"```python\n{ONNX_USAGE_CODE}```")
