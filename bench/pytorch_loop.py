"""Plain PyTorch baseline for the trainer speed benchmark (scripts/bench-trainer.sh).

The same GPT as trellis-trainer (pre-norm blocks, causal SDPA attention, tanh-GELU MLP, tied
head, byte vocabulary), the same batch shape and thread count, AdamW with global-norm clipping,
trained for N steps on random windows of the same text. Prints one JSON line with tokens/s.
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {  # context, width, layers, heads (trainer/src/model.rs)
    "nano": (64, 64, 4, 4),
    "micro": (128, 128, 6, 4),
    "small": (256, 384, 8, 6),
    "gpt2": (1024, 768, 12, 12),
}


class Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.fc_proj = nn.Linear(4 * width, width)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        shape = lambda z: z.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(shape(q), shape(k), shape(v), is_causal=True)
        x = x + self.proj(y.transpose(1, 2).contiguous().view(b, t, c))
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, context, width, layers, heads, vocab=256):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.lnf = nn.LayerNorm(width)

    def forward(self, tokens, targets):
        t = tokens.shape[1]
        x = self.wte(tokens) + self.wpe(torch.arange(t, device=tokens.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lnf(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default="micro")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--deterministic", action="store_true",
                        help="torch.use_deterministic_algorithms(True), as trellis train --device cuda runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    device = torch.device(args.device)
    torch.manual_seed(0)
    context, width, layers, heads = PRESETS[args.model]
    data = torch.frombuffer(bytearray(open(args.data, "rb").read()), dtype=torch.uint8)
    train = data[: int(len(data) * 0.9)].long()
    model = Gpt(context, width, layers, heads).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3, betas=(0.9, 0.95), eps=1e-8,
    )
    warmup, total = 20, args.steps

    def lr_at(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    compute = 0.0
    for step in range(args.steps):
        began = time.perf_counter()
        starts = torch.randint(0, len(train) - context - 1, (args.batch_size,))
        x = torch.stack([train[s : s + context] for s in starts])
        y = torch.stack([train[s + 1 : s + context + 1] for s in starts])
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=False)
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        loss_value = loss.item()
        compute += time.perf_counter() - began
    tokens = args.steps * args.batch_size * context
    print(json.dumps({"tokens_per_second": tokens / compute, "final_loss": loss_value, "steps": args.steps,
                      "torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device}))


if __name__ == "__main__":
    main()
