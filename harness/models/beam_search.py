"""Beam search for the encoder-decoder Transformer, following fairseq's `SequenceGenerator` semantics.

Each step extends the `beam` live hypotheses of every sentence by the 2·beam best tokens; a candidate ending in
EOS that ranks among the first `beam` candidates is finished with score (sum of log-probabilities) / length^lenpen
(length counts the EOS), the others fill the live beams. A sentence stops when it has `beam` finished hypotheses.
As fairseq (min_len 1): EOS is not allowed at the first step, and only EOS once `max_len_a·src_len + max_len_b` tokens
are generated. The decoder is rerun on the whole
prefix each step (no incremental state): simpler, and fast enough for evaluation.
"""

import torch


@torch.no_grad()
def beam_search(model, src_tokens, beam=5, max_len_a=0.0, max_len_b=200, lenpen=1.0):
    """Best hypothesis per source sentence, as lists of token ids without BOS/EOS."""
    was_training = model.training
    model.eval()
    batch, pad, eos = src_tokens.shape[0], model.pad_index, model.eos_index
    src_lengths = src_tokens.ne(pad).sum(1)
    max_lens = (max_len_a * src_lengths.float() + max_len_b).long().clamp(min=1)
    memory, memory_mask = model.encode(src_tokens)
    memory = memory.repeat_interleave(beam, dim=0)
    memory_mask = memory_mask.repeat_interleave(beam, dim=0)
    # The bookkeeping (prefixes, scores) lives on the CPU: one transfer per step instead of one per candidate.
    tokens = torch.full((batch * beam, 1), eos, dtype=torch.long)  # fairseq starts the decoder with EOS
    scores = torch.zeros(batch, beam)
    scores[:, 1:] = float("-inf")  # at step 0 all beams are the same; keep one
    finished = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool)
    for step in range(int(max_lens.max()) + 1):
        logits = model.decode(tokens.to(memory.device), memory, memory_mask)[:, -1].float()
        log_probs = torch.log_softmax(logits, dim=-1)
        log_probs[:, pad] = float("-inf")
        if step == 0:
            log_probs[:, eos] = float("-inf")
        at_limit = (max_lens <= step).repeat_interleave(beam).to(log_probs.device)
        eos_column = log_probs[:, eos].clone()
        log_probs[at_limit] = float("-inf")
        log_probs[at_limit, eos] = eos_column[at_limit]
        vocab = log_probs.shape[-1]
        total = (scores.to(log_probs.device).view(-1, 1) + log_probs).view(batch, beam * vocab)
        top_scores, top_index = (t.cpu() for t in total.topk(2 * beam, dim=1))
        beam_of, token_of = top_index // vocab, top_index % vocab
        new_tokens, new_scores = [], []
        for b in range(batch):
            kept = _advance_sentence(b, step, beam, eos, lenpen, done, finished, tokens,
                                     top_scores[b], beam_of[b], token_of[b])
            new_tokens.extend(t for t, _ in kept)
            new_scores.append(torch.stack([s for _, s in kept]))
        if bool(done.all()):
            break
        tokens = torch.stack(new_tokens)
        scores = torch.stack(new_scores)
    model.train(was_training)
    return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in finished]


def _advance_sentence(b, step, beam, eos, lenpen, done, finished, tokens, top_scores, beam_of, token_of):
    """Finish EOS candidates of sentence b and return its `beam` live (prefix, score) pairs for the next step."""
    live = []
    for rank in range(2 * beam):
        if done[b]:
            break
        prefix = tokens[b * beam + int(beam_of[rank])]
        score, token = top_scores[rank], int(token_of[rank])
        if not torch.isfinite(score):
            continue
        if token == eos:
            if rank < beam:
                finished[b].append((float(score) / (step + 1) ** lenpen, prefix[1:].tolist()))
                if len(finished[b]) >= beam:
                    done[b] = True
            continue
        if len(live) < beam:
            live.append((torch.cat([prefix, prefix.new_tensor([token])]), score))
    filler = (torch.cat([tokens[b * beam], tokens.new_tensor([eos])]), top_scores.new_tensor(float("-inf")))
    return live + [filler] * (beam - len(live))
