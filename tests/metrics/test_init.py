import subprocess
import sys

import vqabench.metrics as metrics


def test_every_public_name_resolves_to_its_module_object():
    from vqabench.metrics import base, classification, vqa

    for name in metrics.__all__:
        assert getattr(metrics, name) is not None, name
    assert metrics.vqa_score is vqa.vqa_score
    assert metrics.weighted_prf is classification.weighted_prf
    assert metrics.METRICS is base.METRICS


def test_unknown_attribute_raises_attribute_error():
    try:
        metrics.not_a_metric  # noqa: B018 (the attribute access is the test)
    except AttributeError as err:
        assert "not_a_metric" in str(err)
    else:
        raise AssertionError("expected AttributeError")


def test_registry_imports_without_heavy_dependencies():
    code = (
        "import sys; from vqabench.metrics.base import METRICS; "
        "heavy = {'torch', 'sklearn', 'pycocoevalcap'} & set(sys.modules); "
        "sys.exit(1 if heavy else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
