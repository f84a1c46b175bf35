"""LIF and LIFPlus step functions against hand-computed equations."""
import pytest
import torch

from bidl_models.neurons import (
    BIDL_LIFPLUS_DEFAULTS, LIFPLUS_DEFAULTS, LIFParams, LIFPlusConfig, LIFPlusParams, LIFState,
    bidl_lifplus_param_names, bidl_lifplus_state_names, lif_step, lifplus_bidl_step, lifplus_step, multistep, spike,
)


def p(alpha=0.3, beta=0.0, theta=0.5, v0=0.0):
    return LIFParams(*(torch.tensor(v) for v in (alpha, beta, theta, v0)))


def test_lif_equations_by_hand():
    x = torch.tensor([[0.2, 0.5, 0.7, -1.0]])
    v = torch.tensor([[0.2, 0.0, 0.0, 0.3]])
    out, st = lif_step(x, LIFState(v), p(alpha=0.3, beta=0.1, theta=0.5, v0=-0.2))
    # U = x + v = [0.4, 0.5, 0.7, -0.7]; fire strictly above 0.5 -> [0, 0, 1, 0]
    assert out.tolist() == [[0.0, 0.0, 1.0, 0.0]]
    # R = [0.4, 0.5, -0.2, -0.7]; V = 0.3 R + 0.1
    torch.testing.assert_close(st.v, torch.tensor([[0.22, 0.25, 0.04, -0.11]]))


def test_lif_fresh_state_equals_zero_state():
    x = torch.randn(3, 5)
    a, sa = lif_step(x, None, p())
    b, sb = lif_step(x, LIFState(torch.zeros(3, 5)), p())
    assert torch.equal(a, b) and torch.equal(sa.v, sb.v)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_lif_analog_memb_modes(k):
    x = torch.tensor([0.3, 0.9, -0.4])
    out, st = lif_step(x, None, p(), mode="analog", memb_mode=(k, "identity"))
    u = x
    f = (u > 0.5).float()
    r = f * 0 + (1 - f) * u
    want = [u, u - 0.5, r, 0.3 * r][k]
    torch.testing.assert_close(out, want)
    relu_out, _ = lif_step(x, None, p(), mode="analog", memb_mode=(k, "relu"))
    torch.testing.assert_close(relu_out, want.clamp(min=0))


def test_channel_share_broadcasts_per_channel():
    x = torch.full((2, 3, 4, 4), 0.6)
    theta = torch.tensor([0.5, 0.7, 0.1]).view(1, 3, 1, 1)
    prm = LIFParams(torch.tensor(0.3), torch.tensor(0.0), theta, torch.tensor(0.0))
    out, _ = lif_step(x, None, prm)
    assert out[:, 0].eq(1).all() and out[:, 1].eq(0).all() and out[:, 2].eq(1).all()


@pytest.mark.parametrize("width", [1.0, 0.5])
def test_rectangle_surrogate_gradient(width):
    z = torch.tensor([-0.6, -0.2, 0.0, 0.2, 0.3, 0.6], requires_grad=True)
    spike(z, width).sum().backward()
    want = ((z.detach().abs() < width / 2).float() / width)
    torch.testing.assert_close(z.grad, want)


def test_noise_only_in_training():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 5, 5)
    kw = dict(mode="analog", memb_mode=(3, "identity"))
    a, _ = lif_step(x, None, p(), noise=0.5, training=False, **kw)
    b, _ = lif_step(x, None, p(), noise=0.0, training=False, **kw)
    c, _ = lif_step(x, None, p(), noise=0.5, training=True, **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("shape", [(4, 8, 5, 5), (6, 7)])
def test_noise_is_bidls(shape):
    """BIDL: U += N(0,1) * std(U over dims >= 2, unbiased; all of a [B, C] state) * noise, no gradient
    through the noise, and the analog output k=0 is U before the noise."""
    x = torch.randn(shape, requires_grad=True)
    torch.manual_seed(3)
    out0, _ = lif_step(x, None, p(), mode="analog", memb_mode=(0, "identity"), noise=0.1, training=True)
    torch.manual_seed(3)
    out1, st = lif_step(x, None, p(alpha=1.0, theta=1e9), mode="analog", memb_mode=(1, "identity"), noise=0.1,
                        training=True)
    torch.manual_seed(3)
    dims = list(range(2, len(shape)))
    std = x.detach().std(dim=dims, keepdim=True) if dims else x.detach().std()
    want = x.detach() + torch.randn(shape) * std * 0.1
    assert torch.equal(out0, x)
    torch.testing.assert_close(st.v, want)
    st.v.sum().backward()
    assert torch.equal(x.grad, torch.ones(shape))


def test_multistep_equals_loop():
    xs = torch.rand(6, 2, 3)
    ys, st = multistep(lif_step, xs, None, p())
    s = None
    for t in range(6):
        y, s = lif_step(xs[t], s, p())
        assert torch.equal(ys[t], y)
    assert torch.equal(st.v, s.v)


def lp(**over):
    vals = dict(LIFPLUS_DEFAULTS, **over)
    return LIFPlusParams(**{k: torch.tensor(v) for k, v in vals.items()})


def test_lifplus_exd_is_documented_euler_form_with_reset():
    cfg = LIFPlusConfig.from_list([0, False, 0, 0, 0, 1])
    x = torch.tensor([0.4, 3.0])
    out, st = lifplus_step(x, None, lp(dt_tau=0.5), cfg)
    # U = v + dt/tau (v0 - v + x) with v = 0: [0.2, 1.5]; the second fires and resets to v0 = 0
    assert out.tolist() == [0.0, 1.0]
    torch.testing.assert_close(st.v, torch.tensor([0.2, 0.0]))
    out2, st2 = lifplus_step(torch.tensor([0.4, 0.0]), st, lp(dt_tau=0.5), cfg)
    torch.testing.assert_close(st2.v, torch.tensor([0.2 + 0.5 * (0 - 0.2 + 0.4), 0.0]))


def test_lifplus_cub_alpha_beta_matches_lif():
    cfg = LIFPlusConfig.from_list([0, False, 0, 0, 0, 0])
    xs = torch.rand(8, 4, 6)
    a, sa = multistep(lifplus_step, xs, None, lp(), cfg)
    b, sb = multistep(lif_step, xs, None, p())
    assert torch.equal(a, b) and torch.equal(sa.v, sb.v)


def test_lifplus_absolute_refractory_blocks_spikes():
    cfg = LIFPlusConfig.from_list([0, False, 1, 0, 0, 0])
    xs = torch.full((5, 1), 2.0)
    ys, _ = multistep(lifplus_step, xs, None, lp(refrac=2.0), cfg)
    assert ys.flatten().tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]


def test_lifplus_relative_refractory_raises_threshold():
    cfg = LIFPlusConfig.from_list([0, False, 2, 0, 0, 0])
    xs = torch.full((2, 1), 0.6)
    ys, st = multistep(lifplus_step, xs, None, lp(refrac=1.0, alpha=0.0), cfg)
    assert ys.flatten().tolist() == [1.0, 0.0]  # second step needs > 0.5 + r
    torch.testing.assert_close(st.r, torch.tensor([0.5 * 1.0]))


def test_lifplus_coba_conductance_filters_input():
    cfg = LIFPlusConfig.from_list([2, False, 0, 0, 0, 0])
    x = torch.tensor([1.0])
    _, st = lifplus_step(x, None, lp(decay_g=0.5), cfg)
    # h = 0 - 0 + 1 = 1; g = 0 + 0.5 (1 - 0) = 0.5
    assert st.h.item() == 1.0 and st.g.item() == 0.5


def test_lifplus_adaptation_grows_after_spikes():
    cfg = LIFPlusConfig.from_list([0, False, 0, 0, 1, 0])
    xs = torch.full((6, 1), 1.0)
    _, st = multistep(lifplus_step, xs, None, lp(), cfg)
    assert st.w.item() > 0


@pytest.mark.parametrize("opts", [
    [a, rv, fr, si, tc, md] for a in (0, 1, 2) for rv in (False, True) for fr in (0, 1, 2)
    for si in (0, 1, 2) for tc in (0, 1, 2) for md in (0, 1, 2)
][::17])
def test_lifplus_all_option_mixes_run_and_state_names(opts):
    cfg = LIFPlusConfig.from_list(opts)
    xs = torch.rand(4, 2, 3) * 2
    ys, st = multistep(lifplus_step, xs, None, lp(), cfg)
    assert torch.isfinite(ys).all()
    assert [n for n in st._fields if getattr(st, n) is not None] == list(cfg.state_names())


@pytest.mark.parametrize("bad", [[0, 0, 0], [3, False, 0, 0, 0, 0], [0, False, 0, 0, 0, 5], "x"])
def test_lifplus_bad_config(bad):
    with pytest.raises(ValueError, match="neuron_config"):
        LIFPlusConfig.from_list(bad)


# ------------------------------------------------------------------ LIF+ in BIDL's form

ALL_OPTS = [[a, rv, fr, si, tc, md] for a in (0, 1, 2) for rv in (False, True) for fr in (0, 1, 2)
            for si in (0, 1, 2) for tc in (0, 1, 2) for md in (0, 1, 2)]


def bp(cfg, **over):
    return {n: torch.tensor(float(over.get(n, BIDL_LIFPLUS_DEFAULTS[n]))) for n in bidl_lifplus_param_names(cfg)}


def test_bidl_lifplus_cub_counts_the_input_twice():
    """The zoo's verified figure: CUB, x=0.2, tau=0.5, alpha=0.3: V_t = alpha (x + tau (x + v0 - V_{t-1}))."""
    cfg = LIFPlusConfig.from_list([0, False, 0, 0, 0, 0])
    prm = bp(cfg, tau_recip=0.5, alpha=0.3, theta=10.0)
    st, v = None, 0.0
    for _ in range(5):
        _, st = lifplus_bidl_step(torch.tensor([0.2]), st, prm, cfg)
        v = 0.3 * (0.2 + 0.5 * (0.2 + 0.0 - v))
        assert st["v"].item() == pytest.approx(v, abs=1e-7)


def test_bidl_lifplus_cobe_conductance_starts_at_one():
    cfg = LIFPlusConfig.from_list([1, False, 0, 0, 0, 0])
    assert bidl_lifplus_param_names(cfg) == ("epsilon", "tau_recip", "v_0", "theta", "alpha", "beta")
    assert bidl_lifplus_state_names(cfg) == ("g_m1", "v")
    prm = bp(cfg, epsilon=0.25, tau_recip=0.5, theta=10.0)
    x = torch.tensor([0.4])
    _, st = lifplus_bidl_step(x, None, prm, cfg)
    g = 0.75 * 1.0 + 0.4                         # BIDL's reset: g = 1
    assert st["g_m1"].item() == pytest.approx(g - 1)
    assert st["v"].item() == pytest.approx(0.3 * (0.4 + 0.5 * (g + 0.0 - 0.0)))


def test_bidl_lifplus_exd_drops_the_reset():
    cfg = LIFPlusConfig.from_list([0, False, 0, 0, 0, 1])
    prm = bp(cfg, tau_recip=0.5, theta=0.1)
    out, st = lifplus_bidl_step(torch.tensor([1.0]), None, prm, cfg)
    assert out.item() == 1.0                      # U = 1 + 0.5 (1 + 0 - 0) = 1.5 > 0.1: fires
    assert st["v"].item() == pytest.approx(0.5 * (1.0 + 0.0))  # V = tau (f2 + f3), no reset to v_0


def test_bidl_lifplus_absolute_refractory_is_ten_steps():
    """BIDL gates only the synaptic term (f2 = 0 while cnt > 0) for cntmax = 10 steps after a spike:
    x = 0.4 fires only with its second copy (0.4 + 0.5 * 0.4 > 0.5), so spikes are 11 steps apart."""
    cfg = LIFPlusConfig.from_list([0, False, 1, 0, 0, 0])
    xs = torch.full((23, 1), 0.4)
    ys, st = multistep(lifplus_bidl_step, xs, None, bp(cfg, tau_recip=0.5, theta=0.5), cfg)
    assert torch.nonzero(ys.flatten()).flatten().tolist() == [0, 11, 22]
    assert st["cnt"].item() == 10.0


def test_bidl_lifplus_fresh_state_equals_zero_state():
    for opts in ALL_OPTS[::7]:
        cfg = LIFPlusConfig.from_list(opts)
        x = torch.rand(3, 4) * 2
        zero = {n: torch.zeros(3, 4) for n in bidl_lifplus_state_names(cfg)}
        a, sa = lifplus_bidl_step(x, None, bp(cfg), cfg)
        b, sb = lifplus_bidl_step(x, zero, bp(cfg), cfg)
        assert torch.equal(a, b) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("opts", ALL_OPTS[::11])
def test_bidl_lifplus_all_option_mixes_run(opts):
    cfg = LIFPlusConfig.from_list(opts)
    xs = torch.rand(4, 2, 3) * 2
    ys, st = multistep(lifplus_bidl_step, xs, None, bp(cfg), cfg, mode="analog")
    assert torch.isfinite(ys).all() and list(st) == list(bidl_lifplus_state_names(cfg))
    assert ys.abs().max() <= 1.0  # analog default: tanh
