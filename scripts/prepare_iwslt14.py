"""Prepare IWSLT14 de-en as fairseq's prepare-iwslt14.sh does: Moses tokenization, lowercasing, length cleaning,
valid = every 23rd training line, joint BPE of 10k merges (subword-nmt). The steps are in
harness/data/iwslt_prepare.py; the `iwslt14_de_en` dataset reads the output folder.

    # from fairseq's pre-BPE files (iwslt14.tokenized.de-en/tmp: train/valid/test.{de,en}):
    python -m scripts.prepare_iwslt14 --tokenized path/to/tmp --out ~/.cache/second-order-repro/iwslt14_de_en_bpe
    # from plain parallel text train.{de,en}, test.{de,en} (tokenized, lowercased and cleaned here):
    python -m scripts.prepare_iwslt14 --raw path/to/text --out data/iwslt14_de_en_bpe
    # the offline mirror has valid and test only: train on valid (minus every 23rd line), test on test
    python -m scripts.prepare_iwslt14 --tokenized ../shared/data/iwslt14_de_en --train-from valid --out data/iwslt_mini
"""

import argparse
import sys

from harness.data.iwslt_prepare import PreparationError, prepare


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tokenized", help="folder of Moses-tokenized, lowercased {train,valid,test}.{de,en}")
    source.add_argument("--raw", help="folder of plain parallel text {train,test}.{de,en}")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--train-from", choices=["train", "valid"], default="train")
    parser.add_argument("--bpe-merges", type=int, default=10000, help="subword-nmt merge operations of the joint BPE (fairseq: 10000)")
    args = parser.parse_args(argv)
    if args.bpe_merges < 100:
        print(f"error: --bpe-merges {args.bpe_merges} is too small (fairseq's recipe uses 10000)", file=sys.stderr)
        return 2
    try:
        out = prepare(args.out, tokenized=args.tokenized, raw=args.raw, train_from=args.train_from, bpe_merges=args.bpe_merges)
    except PreparationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}/{{train,valid,test}}.{{de,en}} and the BPE codes {out}/code")
    return 0


if __name__ == "__main__":
    sys.exit(main())
