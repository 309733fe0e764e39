"""Train the shipped BitNet b1.58 model: a character-level adder, quantization-aware, on CPU.

The task is addition of two numbers of one to three digits, one problem per line::

    \\n123+456=579\\n

A model reads the prompt ``\\n123+456=`` and greedily writes the sum and a newline. Its quality
is the exact-match accuracy on held-out problems: about 5% of all operand pairs (chosen by a
fixed hash) are never trained on, and a fixed, stratified sample of them is the test set.

The architecture is the one :mod:`lpu.host.transformer` runs (Hugging Face ``BitNetForCausalLM``:
RMSNorm, rotary embeddings, grouped-query attention, BitNet's sub-norms, squared-ReLU gated
FFN, tied embeddings). Every projection is a BitLinear trained with the straight-through
estimator: absmean ternary weights and per-token absmax int8 activations, the numerics of
:mod:`lpu.host.quant`. After training the ternary weights and their scales are exported to a
:class:`~lpu.host.tensors.QuantModel`, saved with :func:`lpu.host.loaders.save_hf_bitnet`, loaded
back and evaluated with the host transformer on :class:`~lpu.host.transformer.GoldenBackend`.

Usage (from the repository root; needs the ``train`` extra, i.e. torch)::

    .venv/bin/python train/train_model.py --out models/bitnet-adder
    .venv/bin/python train/train_model.py --eval-only models/bitnet-adder   # no torch needed
    .venv/bin/python train/train_model.py --eval-only models/bitnet-adder --backend sim
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

#: The characters of the language; a token id is an index into this string.
VOCAB = "\n0123456789+="
NL, PLUS, EQ = VOCAB.index("\n"), VOCAB.index("+"), VOCAB.index("=")
#: Every training sequence is padded to this length (the longest line is 14 characters).
SEQ_LEN = 16
#: Test problems per (digits of a, digits of b) class.
TEST_PER_CLASS = 250

CONFIG = {
    "architectures": ["BitNetForCausalLM"],
    "model_type": "bitnet",
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "vocab_size": len(VOCAB),
    "max_position_embeddings": SEQ_LEN,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "relu2",
    "tie_word_embeddings": True,
    "lpu_vocab": VOCAB,
    "lpu_task": "addition of two numbers of 1-3 digits: prompt '\\n{a}+{b}=', answer '{a+b}\\n'",
}


def encode(text):
    """Token ids of ``text``."""
    return [VOCAB.index(c) for c in text]


def decode(ids):
    """Text of token ids."""
    return "".join(VOCAB[i] for i in ids)


def held_out(a, b):
    """True for the operand pairs kept out of training (about 5%, by a fixed hash)."""
    h = (np.asarray(a, dtype=np.uint64) * np.uint64(1000) + np.asarray(b, dtype=np.uint64))
    h = (h * np.uint64(2654435761)) % np.uint64(1 << 32)
    return (h >> np.uint64(12)) % np.uint64(20) == 0


_LOW = np.array([0, 10, 100])
_HIGH = np.array([10, 100, 1000])


def sample_operands(rng, n):
    """``n`` operands: the digit count uniform in 1..3, then the value uniform."""
    digits = rng.integers(0, 3, n)
    return rng.integers(_LOW[digits], _HIGH[digits])


def test_problems(seed=1234):
    """The test set: up to :data:`TEST_PER_CLASS` held-out pairs per digit-count class."""
    rng = np.random.default_rng(seed)
    pairs = []
    for da in range(3):
        for db in range(3):
            a, b = np.meshgrid(np.arange(_LOW[da], _HIGH[da]), np.arange(_LOW[db], _HIGH[db]),
                               indexing="ij")
            a, b = a.ravel(), b.ravel()
            keep = held_out(a, b)
            a, b = a[keep], b[keep]
            pick = rng.permutation(a.size)[:TEST_PER_CLASS]
            pairs += [(int(x), int(y)) for x, y in zip(a[pick], b[pick], strict=True)]
    return pairs


def training_batch(rng, n):
    """``n`` training lines as ids ``(n, SEQ_LEN + 1)`` and a loss mask ``(n, SEQ_LEN)``.

    The mask selects the targets after ``=``: the digits of the sum and the closing newline.
    """
    a, b = [], []
    while len(a) < n:
        x, y = sample_operands(rng, 2 * n), sample_operands(rng, 2 * n)
        keep = ~held_out(x, y)
        a += x[keep].tolist()
        b += y[keep].tolist()
    ids = np.full((n, SEQ_LEN + 1), NL, dtype=np.int64)
    mask = np.zeros((n, SEQ_LEN), dtype=bool)
    for i, (x, y) in enumerate(zip(a[:n], b[:n], strict=True)):
        line = encode(f"\n{x}+{y}={x + y}\n")
        ids[i, :len(line)] = line
        eq = line.index(EQ)
        mask[i, eq:len(line) - 1] = True      # the target of position p is token p + 1
    return ids, mask


def prompt_of(a, b):
    return encode(f"\n{a}+{b}=")


def by_class(problems, answers):
    """Exact-match accuracy per digit-count class, as text: ``"1+1: 5/5, 1+2: ..."``."""
    tally = {}
    for (a, b), ans in zip(problems, answers, strict=True):
        key = f"{len(str(a))}+{len(str(b))}"
        right, total = tally.get(key, (0, 0))
        tally[key] = (right + (ans == f"{a + b}\n"), total + 1)
    return ", ".join(f"{k}: {r}/{n}" for k, (r, n) in sorted(tally.items()))


# -- evaluation on the host (NumPy, no torch) ---------------------------------------------------

def evaluate_host(model, problems, backend=None):
    """Exact-match accuracy of greedy decoding with :func:`lpu.host.transformer.generate`.

    ``backend`` None uses a fresh :class:`GoldenBackend`. Returns (accuracy, answers).
    """
    from lpu.host.transformer import GoldenBackend, generate

    backend = GoldenBackend() if backend is None else backend
    answers, correct = [], 0
    for a, b in problems:
        out = generate(model, prompt_of(a, b), 5, backend, stop_ids=[NL])
        text = decode(out)
        answers.append(text)
        correct += text == f"{a + b}\n"
    return correct / len(problems), answers


# -- torch model ------------------------------------------------------------------------------

def build_torch(config):
    """The torch modules, built only when training (torch is an optional dependency)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class QuantizeActivations(torch.autograd.Function):
        """Per-token absmax int8 fake quantization; the gradient passes straight through."""

        @staticmethod
        def forward(ctx, x):
            s = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
            return (x * s).round().clamp(-128, 127) / s

        @staticmethod
        def backward(ctx, grad):
            return grad

    class QuantizeWeights(torch.autograd.Function):
        """Absmean ternary fake quantization; the gradient passes straight through."""

        @staticmethod
        def forward(ctx, w):
            alpha = w.abs().mean().clamp(min=1e-5)
            return (w / alpha).round().clamp(-1, 1) * alpha

        @staticmethod
        def backward(ctx, grad):
            return grad

    class BitLinear(nn.Linear):
        """Linear layer with BitNet b1.58 quantization and the straight-through estimator.

        ``forward`` takes activations already quantized by :class:`QuantizeActivations`, so
        projections reading the same input (q, k, v; gate, up) quantize it once.
        """

        def __init__(self, in_features, out_features):
            super().__init__(in_features, out_features, bias=False)

        def ternary(self):
            w = self.weight
            alpha = w.abs().mean().clamp(min=1e-5)
            return (w / alpha).round().clamp(-1, 1), alpha

        def forward(self, x_q):
            return F.linear(x_q, QuantizeWeights.apply(self.weight))

    quant = QuantizeActivations.apply

    class RMSNorm(nn.Module):
        def __init__(self, dim, eps):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim))
            self.eps = eps

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    def rope(x, cos, sin):
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    class Attention(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.nh, self.nkv, self.hd = (c["num_attention_heads"], c["num_key_value_heads"],
                                          c["head_dim"])
            d = c["hidden_size"]
            self.q_proj = BitLinear(d, self.nh * self.hd)
            self.k_proj = BitLinear(d, self.nkv * self.hd)
            self.v_proj = BitLinear(d, self.nkv * self.hd)
            self.o_proj = BitLinear(self.nh * self.hd, d)
            self.attn_sub_norm = RMSNorm(self.nh * self.hd, c["rms_norm_eps"])

        def forward(self, x, cos, sin):
            b, t, _ = x.shape
            x = quant(x)
            q = self.q_proj(x).view(b, t, self.nh, self.hd).transpose(1, 2)
            k = self.k_proj(x).view(b, t, self.nkv, self.hd).transpose(1, 2)
            v = self.v_proj(x).view(b, t, self.nkv, self.hd).transpose(1, 2)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            rep = self.nh // self.nkv
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            a = a.transpose(1, 2).reshape(b, t, self.nh * self.hd)
            return self.o_proj(quant(self.attn_sub_norm(a)))

    class MLP(nn.Module):
        def __init__(self, c):
            super().__init__()
            d, f = c["hidden_size"], c["intermediate_size"]
            self.gate_proj = BitLinear(d, f)
            self.up_proj = BitLinear(d, f)
            self.down_proj = BitLinear(f, d)
            self.ffn_sub_norm = RMSNorm(f, c["rms_norm_eps"])

        def forward(self, x):
            x = quant(x)
            h = torch.relu(self.gate_proj(x)).square() * self.up_proj(x)
            return self.down_proj(quant(self.ffn_sub_norm(h)))

    class Layer(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
            self.self_attn = Attention(c)
            self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
            self.mlp = MLP(c)

        def forward(self, x, cos, sin):
            x = x + self.self_attn(self.input_layernorm(x), cos, sin)
            return x + self.mlp(self.post_attention_layernorm(x))

    class Model(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.config = c
            self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
            # Small, as usual for tied embeddings: the lm_head's logits start near 0.
            nn.init.normal_(self.embed_tokens.weight, std=0.02)
            self.layers = nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))
            self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
            hd = c["head_dim"]
            inv_freq = 1.0 / (c["rope_theta"] **
                              (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
            pos = torch.arange(c["max_position_embeddings"], dtype=torch.float32)
            emb = torch.cat([pos[:, None] * inv_freq] * 2, dim=-1)
            self.register_buffer("cos", emb.cos(), persistent=False)
            self.register_buffer("sin", emb.sin(), persistent=False)

        def forward(self, ids):
            t = ids.shape[1]
            x = self.embed_tokens(ids)
            for layer in self.layers:
                x = layer(x, self.cos[:t], self.sin[:t])
            return self.norm(x) @ self.embed_tokens.weight.T     # tied lm_head

    return Model(config)


def evaluate_torch(net, problems):
    """Exact-match accuracy of greedy decoding with the torch model (batched per length)."""
    import torch

    by_len = {}
    for a, b in problems:
        by_len.setdefault(len(prompt_of(a, b)), []).append((a, b))
    correct, answers = 0, {}
    with torch.no_grad():
        for n, group in by_len.items():
            ids = torch.tensor([prompt_of(a, b) for a, b in group])
            done = torch.zeros(len(group), dtype=torch.bool)
            out = []
            for _ in range(min(5, SEQ_LEN - n + 1)):
                nxt = net(ids)[:, -1].argmax(-1)
                nxt = torch.where(done, torch.full_like(nxt, NL), nxt)
                out.append(nxt)
                done |= nxt == NL
                if done.all() or ids.shape[1] == SEQ_LEN:
                    break
                ids = torch.cat([ids, nxt[:, None]], dim=1)
            gen = torch.stack(out, 1).tolist()
            for (a, b), row in zip(group, gen, strict=True):
                text = decode(row)
                text = text[:text.index("\n") + 1] if "\n" in text else text
                answers[(a, b)] = text
                correct += text == f"{a + b}\n"
    return correct / len(problems), [answers[p] for p in problems]


def logit_deviation(net, model, problems):
    """Largest ``|logits_host - logits_torch| / max |logits_torch|`` over the prompts' tokens."""
    import torch

    from lpu.host.transformer import GoldenBackend, forward

    worst = 0.0
    for a, b in problems:
        ids = prompt_of(a, b) + encode(f"{a + b}")
        with torch.no_grad():
            want = net(torch.tensor([ids]))[0].numpy()
        got = forward(model, np.array(ids), GoldenBackend())
        worst = max(worst, float(np.abs(got - want).max() / np.abs(want).max()))
    return worst


def export(net):
    """The trained network as a :class:`QuantModel` (ternary weights and absmean scales)."""
    import torch

    from lpu.host.tensors import QuantLinear, QuantModel

    model = QuantModel(config=dict(net.config))
    with torch.no_grad():
        for name, mod in net.named_modules():
            if hasattr(mod, "ternary"):
                w_t, alpha = mod.ternary()
                key = "model." + name
                model.linears[key] = QuantLinear(key, w_t.to(torch.int8).numpy(),
                                                 np.float32(alpha.item()))
        for name, p in net.named_parameters():
            if not name.endswith("proj.weight"):
                model.tensors["model." + name] = p.detach().numpy().astype(np.float32)
    return model


def train(args):
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    net = build_torch(CONFIG)
    decay = [p for n, p in net.named_parameters() if n.endswith("proj.weight")]
    rest = [p for n, p in net.named_parameters() if not n.endswith("proj.weight")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": rest, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)

    def lr_at(step):
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, args.steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    problems = test_problems()
    t0 = time.monotonic()
    for step in range(args.steps):
        ids, mask = training_batch(rng, args.batch)
        ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
        logits = net(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits[mask], ids[:, 1:][mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            msg = f"step {step:5d}  loss {loss.item():.4f}  {time.monotonic() - t0:6.0f} s"
            if step and (step % (10 * args.log_every) == 0 or step == args.steps - 1):
                net.eval()
                acc, _ = evaluate_torch(net, problems[::4])
                net.train()
                msg += f"  accuracy (1/4 of test) {acc:.4f}"
            print(msg, flush=True)
    seconds = time.monotonic() - t0
    net.eval()
    acc_torch, ans_torch = evaluate_torch(net, problems)
    print(f"trained {args.steps} steps in {seconds:.0f} s; torch accuracy {acc_torch:.4f} "
          f"on {len(problems)} held-out problems", flush=True)
    return net, seconds, acc_torch, ans_torch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="models/bitnet-adder", help="output directory")
    parser.add_argument("--eval-only", metavar="DIR",
                        help="evaluate a saved model with the host transformer; no training")
    parser.add_argument("--backend", choices=("golden", "sim"), default="golden",
                        help="with --eval-only: the golden backend, or the simulated LPU "
                             "(Verilator) and the golden backend both, compared answer by answer")
    parser.add_argument("--record", metavar="FILE",
                        help="with --eval-only: write the figures as JSON to FILE")
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    # One thread: on a shared 2-core machine two threads spin-wait at OpenMP barriers and were
    # up to 4x slower than one; the thread count can also change float rounding of training.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=50)
    args = parser.parse_args(argv)

    from lpu.host.loaders import load_hf_bitnet, save_hf_bitnet

    problems = test_problems()
    if args.eval_only:
        model = load_hf_bitnet(args.eval_only)
        t0 = time.monotonic()
        acc, answers = evaluate_host(model, problems)
        print(f"host transformer, golden backend: accuracy {acc:.4f} on {len(problems)} "
              f"held-out problems ({time.monotonic() - t0:.0f} s)\n"
              f"by digit counts: {by_class(problems, answers)}", flush=True)
        report = {"model": args.eval_only, "test_problems": len(problems),
                  "accuracy_golden_backend": acc}
        if args.backend == "sim":
            from lpu.host.run import Session
            session = Session(args.eval_only, backend="sim")
            try:
                t0 = time.monotonic()
                c0 = session.transport.cycles
                acc_sim, ans_sim = evaluate_host(model, problems, session.backend)
                cycles = session.transport.cycles - c0
                seconds = time.monotonic() - t0
            finally:
                session.close()
            differ = sum(x != y for x, y in zip(answers, ans_sim, strict=True))
            print(f"simulated LPU (Verilator): accuracy {acc_sim:.4f}; answers differing "
                  f"from the golden backend: {differ}; {cycles:,} simulated cycles in "
                  f"{seconds:.0f} s", flush=True)
            report.update({"accuracy_simulated_lpu": acc_sim, "answers_differing": differ,
                           "simulated_cycles": cycles, "seconds": round(seconds)})
        if args.record:
            Path(args.record).write_text(json.dumps(report, indent=1) + "\n")
        return

    net, seconds, acc_torch, ans_torch = train(args)
    out = Path(args.out)
    save_hf_bitnet(export(net), out)
    model = load_hf_bitnet(out)
    acc_host, ans_host = evaluate_host(model, problems)
    differ = sum(x != y for x, y in zip(ans_torch, ans_host, strict=True))
    dev = logit_deviation(net, model, problems[::16])
    print(f"logits, host golden backend against torch: max |difference| / max |logit| = "
          f"{dev:.2e}", flush=True)
    print(f"host transformer, golden backend: accuracy {acc_host:.4f}; answers differing from "
          f"torch: {differ}\nby digit counts: {by_class(problems, ans_host)}", flush=True)
    report = {"task": CONFIG["lpu_task"], "test_problems": len(problems),
              "accuracy_golden_backend": acc_host, "accuracy_torch": acc_torch,
              "answers_differing": differ, "logit_deviation": float(f"{dev:.3g}"),
              "train_seconds": round(seconds),
              "steps": args.steps, "batch": args.batch, "lr": args.lr,
              "weight_decay": args.weight_decay, "seed": args.seed, "threads": args.threads}
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
