"""Cached linearisation of the network for the refit's J·u products (llqr_spec.md §4.2 "linearize once" [C]).

The authors call ``jax.linearize`` once per refit, so each inner step propagates tangents only. Eager
``torch.func.jvp`` recomputes the primal forward with every product, and its forward-mode formulas (BatchNorm,
LayerNorm, attention) are several times the cost of the forward. Here [E], once per refit *signature* (shapes,
dtypes, devices of parameters, buffers and inputs; train/eval flags), the JVP of the refit forward is traced with
``make_fx`` and split into

* a **primal graph** (parameters, buffers, inputs → every primal value the tangent pass reads, and the output),
  run once per refit (after the objective's RNG reset, so dropout masks are those of the eager forward), and
* a **tangent graph** (those values, u → J·u), run at every inner step.

The graphs replay the aten ops of the eager JVP in the same order, so J·u is the same to the bit. Both are
checked, and the eager ``jvp`` is used whenever a check fails: a forward that ``make_fx`` cannot trace (control
flow on tensor values) falls back with a warning; at trace time J·u of a random tangent must equal the eager JVP
exactly; at every refit the primal graph's output must equal the eager forward's exactly (Python state that
changes the forward between refits falls back). A tangent-pass op that writes into a primal value makes the trace
unusable (it would corrupt the next product) and falls back too.

``compile=True`` [E] also hands the tangent graph to ``torch.compile`` (inductor), which fuses the JVP's
elementwise ops (LayerNorm, softmax and bias tangents are most of a transformer's tangent pass on CPU: measured
2x faster on the benchmark GPT, little change on the ResNet). Fused kernels round differently, so J·u then matches
the eager JVP to a tolerance (checked at trace time: relative 1e-4 of the largest entry), not to the bit, and the
first refit of each shape pays the compilation (tens of seconds on CPU). If compilation fails the exact traced
graph is used, with a warning.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict

import torch
from torch.func import jvp
from torch.fx import Graph, GraphModule
from torch.fx.experimental.proxy_tensor import make_fx

_FAILED = "failed"


def _signature(tensors, model, names) -> tuple:
    meta = tuple((tuple(t.shape), t.dtype, t.device) for t in tensors)
    return meta + (tuple(m.training for m in model.modules()), tuple(names))


def _writes_primal(node, tangent) -> bool:
    """True if ``node`` (an op of the tangent pass) writes into one of its primal (non-tangent) arguments."""
    schema = getattr(node.target, "_schema", None)
    if schema is None or not schema.is_mutable:
        return False
    for arg, value in zip(schema.arguments, node.args):
        written = arg.alias_info is not None and arg.alias_info.is_write
        if written and isinstance(value, torch.fx.Node) and value not in tangent:
            return True
    return False


def _needed(start) -> set:
    seen, stack = set(), [start]
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(node.all_input_nodes)
    return seen


def split_tangent_graph(gm: GraphModule, n_primal: int):
    """Split a traced (primals…, tangents…) → (output, J·u) graph into primal and tangent graphs (or None)."""
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    primal_out, tangent_out = nodes[-1].args[0]
    tangent = set(placeholders[n_primal:])
    for node in nodes:
        if node.op == "call_function" and any(a in tangent for a in node.all_input_nodes):
            tangent.add(node)
    needed = _needed(tangent_out)
    tangent_nodes = [n for n in nodes if n in needed and n in tangent and n.op != "placeholder"]
    if any(_writes_primal(n, tangent) for n in tangent_nodes):
        return None
    boundary = [n for n in nodes if n in needed and n not in tangent
                and (n is tangent_out or any(u in tangent and u in needed for u in n.users))]
    primal_needed = set().union(*(_needed(n) for n in boundary + [primal_out]))

    primal_graph, env = Graph(), {}
    for node in nodes:
        if node.op == "placeholder" and node not in tangent:
            env[node] = primal_graph.placeholder(node.name)
        elif node in primal_needed and node.op != "placeholder":
            env[node] = primal_graph.node_copy(node, lambda n: env[n])
    primal_graph.output((tuple(env[n] for n in boundary), env[primal_out]))

    tangent_graph, env = Graph(), {}
    for node in boundary:
        env[node] = tangent_graph.placeholder(f"b_{node.name}")
    for node in placeholders[n_primal:]:
        env[node] = tangent_graph.placeholder(node.name)
    for node in tangent_nodes:
        env[node] = tangent_graph.node_copy(node, lambda n: env[n])
    tangent_graph.output(env[tangent_out])
    return GraphModule(gm, primal_graph), GraphModule(gm, tangent_graph)


class LinearizationCache:
    """Traced primal/tangent graphs of a refit forward, one per signature (at most ``max_entries``) [E]."""

    def __init__(self, max_entries: int = 4, compile: bool = False):
        self.max_entries, self.compile = max_entries, bool(compile)
        self.entries: OrderedDict = OrderedDict()
        self.used = self.fallbacks = 0  # refits served by a trace / by the eager JVP

    def linearize(self, forward, primals, n_theta, model, names, eager_output, reset_rng):
        """J·u as a function of u, for ``forward(primals)``; None when the trace is unusable (eager fallback).

        ``forward(theta, rest)`` is the refit forward, ``primals`` = theta (the first ``n_theta``) + the other
        tensors it reads (fixed parameters, buffers, inputs), ``names`` what they are called in ``model``;
        ``eager_output`` is the eager forward's output at these primals, ``reset_rng`` restores the RNG state
        before a forward.
        """
        key = _signature(primals, model, names)
        entry = self.entries.get(key)
        if entry is None:
            entry = self._trace(forward, primals, n_theta, reset_rng)
            self.entries[key] = entry
            while len(self.entries) > self.max_entries:
                self.entries.popitem(last=False)
        if entry is _FAILED:
            self.fallbacks += 1
            return None
        primal_gm, tangent_gm = entry
        reset_rng()
        boundary, output = primal_gm(*primals)
        if not torch.equal(output, eager_output):  # control flow or RNG differ from the trace: stay eager
            self.fallbacks += 1
            return None
        self.used += 1
        return lambda u: tangent_gm(*boundary, *u)

    def _trace(self, forward, primals, n_theta, reset_rng):
        def traced(*args):
            theta, rest, tangents = args[:n_theta], args[n_theta:len(primals)], args[len(primals):]
            return jvp(lambda th: forward(th, rest), (theta,), (tangents,))

        theta = tuple(primals[:n_theta])
        probe = tuple(torch.randn_like(t) for t in theta)
        reset_rng()
        try:
            gm = make_fx(traced, tracing_mode="real")(*primals, *probe)
        except Exception as err:  # e.g. data-dependent control flow: make_fx refuses, the eager JVP works
            warnings.warn(f"LLQR: the refit forward could not be traced ({type(err).__name__}: {err}); "
                          "using the eager JVP.", stacklevel=4)
            return _FAILED
        graphs = split_tangent_graph(gm, len(primals))
        if graphs is None:
            return _FAILED
        reset_rng()
        _, expected = jvp(lambda th: forward(th, primals[n_theta:]), (theta,), (probe,))
        reset_rng()
        boundary, _ = graphs[0](*primals)
        if not torch.equal(graphs[1](*boundary, *probe), expected):
            return _FAILED
        if self.compile:
            return graphs[0], _compiled(graphs[1], boundary, probe, expected)
        return graphs


def _compiled(tangent_gm, boundary, probe, expected, rtol=1e-4):
    """``torch.compile`` of the tangent graph if it reproduces the eager J·u to ``rtol`` of its largest entry."""
    try:
        compiled = torch.compile(tangent_gm, dynamic=False, fullgraph=True)
        error = (compiled(*boundary, *probe) - expected).abs().max()
    except Exception as err:  # e.g. no C++ compiler for inductor's CPU kernels
        warnings.warn(f"LLQR: compiling the tangent graph failed ({type(err).__name__}: {err}); using the traced "
                      "graph uncompiled.", stacklevel=5)
        return tangent_gm
    if not error <= rtol * expected.abs().max():
        warnings.warn(f"LLQR: the compiled tangent graph is off by {float(error):.3g}; using it uncompiled.",
                      stacklevel=5)
        return tangent_gm
    return compiled
