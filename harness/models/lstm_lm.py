"""LSTM language models for Penn Treebank, with the cells built from nn.Linear (no nn.LSTM).

`awd_lstm` follows the AWD-LSTM model of the AdaBelief PTB experiments (which the PSGD paper's Table 4 reuses,
psgd_notes.md §6.4): embedding 400, hidden 1150, 1-3 layers with the last layer's width equal to the embedding
so that the decoder is tied to the embedding, embedding dropout (dropoute), locked (variational) dropout on the
input (dropouti), between layers (dropouth) and on the output (dropout), and DropConnect on the hidden-to-hidden
weights (wdrop). Each layer has an input-to-hidden and a hidden-to-hidden Linear with biases, so the parameter
count equals nn.LSTM's (3 layers: 24,221,600). Not reproduced: the AR/TAR activation penalties (the loss
protocol sees only the logits) and the hidden state carried across batches (every batch starts from zeros).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.registry import register_model


class DropConnectLinear(nn.Linear):
    """nn.Linear whose weight is multiplied by a dropout mask drawn once per sequence (`sample_mask`), so that
    forward hooks of Kronecker-factored optimizers still see an ordinary Linear layer (awd-lstm's WeightDrop)."""

    def __init__(self, in_features, out_features, p=0.0):
        super().__init__(in_features, out_features)
        self.p, self.masked_weight = p, None

    def sample_mask(self):
        """Draw the mask and form the masked weight once per sequence (one tensor in the graph, not one per step)."""
        self.masked_weight = None
        if self.training and self.p > 0:
            self.masked_weight = F.dropout(self.weight, self.p, training=True)

    def forward(self, x):
        return F.linear(x, self.weight if self.masked_weight is None else self.masked_weight, self.bias)


class LSTMLayer(nn.Module):
    """One LSTM layer: gates = W_ih x_t + b_ih + W_hh h_{t−1} + b_hh, in nn.LSTM's (i, f, g, o) order."""

    def __init__(self, input_size, hidden_size, weight_drop=0.0):
        super().__init__()
        self.hidden_size = hidden_size
        self.ih = nn.Linear(input_size, 4 * hidden_size)
        self.hh = DropConnectLinear(hidden_size, 4 * hidden_size, weight_drop)
        bound = hidden_size**-0.5  # nn.LSTM's initialisation U(−1/√h, 1/√h)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x):
        batch, steps, _ = x.shape
        self.hh.sample_mask()
        projected = self.ih(x)  # all time steps at once
        h = x.new_zeros(batch, self.hidden_size)
        c = torch.zeros_like(h)
        outputs = []
        for t in range(steps):
            i, f, g, o = (projected[:, t] + self.hh(h)).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs, dim=1)


def locked_dropout(x, p, training):
    """Variational dropout: one mask per sequence, shared over time (x is (batch, time, features))."""
    if not training or p == 0:
        return x
    mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - p) / (1 - p)
    return x * mask


def embedding_dropout(embedding, words, p, training):
    """awd-lstm's embedded_dropout: drop whole rows (words) of the embedding matrix, rescaling the rest."""
    weight = embedding.weight
    if training and p > 0:
        weight = weight * weight.new_empty(weight.shape[0], 1).bernoulli_(1 - p) / (1 - p)
    return F.embedding(words, weight)


class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab_size, emb_size=400, hidden_size=1150, num_layers=3, dropout=0.4, dropouth=0.25,
                 dropouti=0.4, dropoute=0.1, wdrop=0.5, tie_weights=True):
        super().__init__()
        self.encoder = nn.Embedding(vocab_size, emb_size)
        sizes = [emb_size] + [hidden_size] * (num_layers - 1) + [emb_size if tie_weights else hidden_size]
        self.layers = nn.ModuleList(LSTMLayer(sizes[k], sizes[k + 1], wdrop) for k in range(num_layers))
        self.decoder = nn.Linear(sizes[-1], vocab_size)
        if tie_weights:
            self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)  # awd-lstm's init_weights
        nn.init.zeros_(self.decoder.bias)
        self.dropout, self.dropouth, self.dropouti, self.dropoute = dropout, dropouth, dropouti, dropoute

    def forward(self, words):
        x = embedding_dropout(self.encoder, words, self.dropoute, self.training)
        x = locked_dropout(x, self.dropouti, self.training)
        for k, layer in enumerate(self.layers):
            x = layer(x)
            last = k == len(self.layers) - 1
            x = locked_dropout(x, self.dropout if last else self.dropouth, self.training)
        return self.decoder(x)


@register_model("lstm_lm")
def lstm_lm(info, emb_size=400, hidden_size=1150, num_layers=3, dropout=0.4, dropouth=0.25, dropouti=0.4,
            dropoute=0.1, wdrop=0.5, tie_weights=True):
    if num_layers < 1:
        raise ValueError(f"model.num_layers must be >= 1, got {num_layers}")
    return LSTMLanguageModel(info["vocab_size"], emb_size, hidden_size, num_layers, dropout, dropouth, dropouti,
                             dropoute, wdrop, tie_weights)
