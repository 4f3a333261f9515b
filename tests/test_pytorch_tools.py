"""The sparse model handed to PyTorch's own tools: torch.jit.trace (with and without gradients), both ONNX exporters,
torch.export, torch.compile (training and evaluation, no graph break at N:M layers), FX symbolic tracing (timm's
FeatureGraphNet, torchvision's create_feature_extractor) give the eager model's output; torch.jit.script refuses
naming the layer and export_dense."""
import warnings

import pytest
import timm
import torch
import torch.nn as nn

import nm_plugins.timm  # noqa: F401  (registers the nm_* names)
from nm_plugins.core import SparseConv2d, SparseLinear, export_dense, sparse_layers, sparsify

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning",
                                        "ignore::torch.jit.TracerWarning")


def small_net(method="srste", decay_mode="step"):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.Flatten(),
                        nn.Linear(16 * 6 * 6, 10))
    sparsify(net, "2:4", method=method, keep_classifier_dense=False, decay_mode=decay_mode,
             example_inputs=torch.randn(1, 8, 6, 6))
    return net


def inputs(seed=1, n=2):
    return torch.randn(n, 8, 6, 6, generator=torch.Generator().manual_seed(seed))


def eager_eval(net, x):
    with torch.no_grad():
        return net.eval()(x)


@pytest.mark.parametrize("grad_mode", ["no_grad", "inference_mode", "grad"])
def test_jit_trace_records_the_mask_computation(grad_mode):
    """Traced under no_grad / inference_mode the old layers handed the tracer a tensor the C kernel filled outside
    its view: the trace replayed uninitialised memory (values around 1e37)."""
    lin = SparseLinear(16, 8)
    x = torch.randn(4, 16)
    ctx = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode, "grad": torch.enable_grad}[grad_mode]
    with ctx():
        traced = torch.jit.trace(lin, x)
    for seed in (1, 2):
        y = torch.randn(4, 16, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            assert torch.equal(traced(y), lin(y))
    net = small_net()
    with ctx():
        traced = torch.jit.trace(net.eval(), inputs())
    with torch.no_grad():
        assert torch.equal(traced(inputs(3)), net(inputs(3)))
    # the trace follows later weight updates, as the layer does
    with torch.no_grad():
        lin.weight.mul_(-1.5)
        assert torch.equal(torch.jit.trace(lin, x)(x), lin(x))


def test_jit_traced_training_step_equals_eager():
    eager_net, traced_net = small_net(), small_net()
    traced = torch.jit.trace(traced_net, inputs())
    results = []
    for net, fn in ((eager_net, eager_net), (traced_net, traced)):
        opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
        for step in range(2):
            opt.zero_grad()
            fn(inputs(step)).square().mean().backward()
            opt.step()
        results.append([p.detach().clone() for p in net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def _onnx_outputs(path, xs):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path))
    name = session.get_inputs()[0].name
    return [torch.from_numpy(session.run(None, {name: x.numpy()})[0]) for x in xs]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_export_computes_the_sparse_model(tmp_path, dynamo):
    """The TorchScript-based exporter used to give a constant output for every input (the traced uninitialised
    masked weight), without an error; the dynamo-based one refused ("Cannot access data pointer")."""
    pytest.importorskip("onnx")
    if dynamo:
        pytest.importorskip("onnxscript")
    net = small_net().eval()
    path = tmp_path / "net.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (inputs(),), str(path), dynamo=dynamo)
    xs = [inputs(5), inputs(6)]
    dense_out = eager_eval(_dense_copy(net), xs[0])
    for x, got in zip(xs, _onnx_outputs(path, xs)):
        torch.testing.assert_close(got, eager_eval(net, x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_onnx_outputs(path, xs[:1])[0], dense_out, atol=1e-3)  # not the dense weights


def _dense_copy(net):
    """The same layers without their masks: what a model that reads around its masks computes."""
    plain = nn.Sequential(*[nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.Flatten(),
                            nn.Linear(16 * 6 * 6, 10)])
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.endswith("nm_mask")})
    return plain.eval()


def test_torch_export_gives_the_eager_output_and_shows_the_operator():
    net = small_net().eval()
    program = torch.export.export(net, (inputs(),))
    assert "nm_sparsity.masked_weight" in program.graph_module.code
    for seed in (1, 7):
        assert torch.equal(program.module()(inputs(seed)), eager_eval(net, inputs(seed)))


def train(net, fn, steps=3):
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    for step in range(steps):
        opt.zero_grad()
        fn(inputs(step, 4)).square().mean().backward()
        opt.step()
    return [p.detach().clone() for p in net.parameters()] + [b.clone() for b in net.buffers()]


@pytest.mark.parametrize("method,decay_mode", [("srste", "step"), ("srste", "call"), ("ste", "step"),
                                               ("fixed", "step")])
def test_compiled_training_has_no_graph_break_and_equals_eager(method, decay_mode):
    """fullgraph=True: one graph for forward and backward (the old layers broke the graph at every N:M layer). The
    SR-STE decay is still added at optimizer.step (owed by the operator's backward), once per step or per call."""
    net_e = small_net(method, decay_mode)
    eager = train(net_e, net_e)
    net_c = small_net(method, decay_mode)
    compiled = train(net_c, torch.compile(net_c, backend="aot_eager", fullgraph=True))
    assert all(torch.equal(a, b) for a, b in zip(eager, compiled))
    # evaluation, compiled, follows the trained weights
    fn = torch.compile(net_c.eval(), backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert torch.equal(fn(inputs(9)), net_e.eval()(inputs(9)))


def test_compiled_sparse_resnet18_training_step_is_one_graph_and_equals_eager():
    def make():
        torch.manual_seed(0)
        return timm.create_model("nm_resnet18_srste_2_4", num_classes=10)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    results = []
    for compiled in (False, True):
        net = make()
        fn = torch.compile(net, backend="aot_eager", fullgraph=True) if compiled else net
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):
            opt.zero_grad()
            fn(x).logsumexp(1).mean().backward()
            opt.step()
        results.append([p.detach().clone() for p in net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_fx_symbolic_trace_and_feature_extractors_match_eager():
    from timm.models import FeatureGraphNet
    from torchvision.models.feature_extraction import create_feature_extractor

    net = small_net().eval()
    gm = torch.fx.symbolic_trace(net)
    assert "nm_sparsity.masked_weight" in gm.code
    assert torch.equal(gm(inputs()), eager_eval(net, inputs()))
    torch.manual_seed(0)
    model = timm.create_model("nm_resnet18_srste_2_4", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model.forward_intermediates(x, intermediates_only=True)
        graph = FeatureGraphNet(model, out_indices=(1, 2, 3, 4))
        got = graph(x)
        assert len(got) == 4 and all(torch.equal(a, b) for a, b in zip(got, want[1:]))
        extractor = create_feature_extractor(model, return_nodes={"layer2": "l2", "layer4": "l4"})
        got = extractor(x)
        assert torch.equal(got["l2"], want[2]) and torch.equal(got["l4"], want[4])


def test_jit_script_refuses_naming_the_layer_and_export_dense():
    net = small_net()
    with pytest.raises(RuntimeError, match=r"(?s)SparseConv2d.*export_dense"):
        torch.jit.script(net)
    scripted = torch.jit.script(export_dense(net).eval())
    assert torch.equal(scripted(inputs()), eager_eval(net, inputs()))


def test_a_copied_layer_owes_its_own_decay_under_compile():
    """The operator's backward finds its layer by an id: a deepcopy is its own layer."""
    import copy

    layer = SparseConv2d(8, 8, 3)
    twin = copy.deepcopy(layer)
    assert layer._nm_op_id != twin._nm_op_id
    fn = torch.compile(twin, backend="aot_eager", fullgraph=True)
    fn(torch.randn(1, 8, 5, 5)).sum().backward()
    assert twin._state.calls == 1 and layer._state.calls == 0
    assert dict(sparse_layers(nn.Sequential(twin)))
