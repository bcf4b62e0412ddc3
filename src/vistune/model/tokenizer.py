"""The small byte-level BPE tokenizer that ships with vistune (for the built-in tiny presets).

It is trained deterministically on a built-in corpus (English function words, the synthetic world's
vocabulary, the benchmark prompts and the chat-template markers) and saved in
``vistune/assets/tiny_tokenizer``. Digits are always split one per token, so reading numbers is a
per-character task. Any string is encodable (byte fallback). Rebuild with
``python -m vistune.model.tokenizer`` (a test checks the shipped file equals a rebuild).
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_tokenizer"
VOCAB_SIZE = 1024

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<image>",
    "<video>",
    "<unk>",
    "<s>",
    "</s>",
    "<pad>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]

_WORDS = """
the a an of to in on at is are was were be been and or not no yes it this that these those there here
what which who where when how many much more less most least than then with without from by for as into
over under above below left right top bottom middle center centre corner upper lower side next between near
far behind front image picture photo scene shows showing shown contains containing there's object objects
shape shapes color colour colors colours size small large big tiny medium bright dark light
red green blue yellow purple orange black white gray grey brown pink cyan magenta
circle circles square squares triangle triangles star stars diamond diamonds hexagon hexagons cross crosses
ring rings heart hearts rectangle rectangles ellipse ellipses line lines dot dots
one two three four five six seven eight nine ten eleven twelve zero first second third fourth last
count number numbers total sum value values chart bar bars graph plot axis label labels title legend
document text page word words letter letters read reading written says write transcribe transcription
question answer answers choice choices option options correct incorrect true false
Answer the question using a single word or phrase.
Answer with the option's letter from the given choices directly.
Please generate detailed descriptions of the given image.
Please answer yes or no.
Describe the image in detail.
What is written in the image?
Read the text in the image.
Which of the following is true?
You are a helpful assistant.
A chat between a curious user and an artificial intelligence assistant.
The assistant gives helpful, detailed, and polite answers to the user's questions.
system user assistant USER ASSISTANT Human Assistant
A B C D E F G H I J K L M N O P Q R S T U V W X Y Z
a b c d e f g h i j k l m n o p q r s t u v w x y z
0 1 2 3 4 5 6 7 8 9 % . , ; : ! ? ' " ( ) [ ] { } - + = / * # @ & $
Is there a in the image? Are there any How many are there? What color is the What shape is the
Is the to the left of the Is the to the right of the above below
The image shows a on a background. In the image there is a and a
highest lowest largest smallest greater fewer equal same different
relative higher List data caption brief concisely Summarize Provide Write short visual content comes after
plus minus seen each description descriptions generate detailed picture section break breaks insert instead
Answer the question with a single word.
OCR this image section by section, from top to bottom, and left to right.
Do not insert line breaks in the output text.
If a word is split due to a line break in the image, use a space instead.
The image shows one object on a white background. There is a blue square on the right.
The image shows two objects on a white background. There are a red circle at the top and a green cross below it.
Write a short caption for the image. Summarize the visual content of the image.
Provide a brief description of the given image. Describe the image concisely.
What is the value of the bar? Which bar is the highest? Which bar is the lowest?
What is written after CODE? What is written after NAME? Read the document. List the data of the chart.
ID NO CODE NAME DATE ROOM TEL REF LOT KEY
"""


def _corpus() -> list[str]:
    lines = [ln.strip() for ln in _WORDS.strip().splitlines() if ln.strip()]
    # repeat so frequent words win merges deterministically
    out: list[str] = []
    for i in range(40):
        out.extend(lines)
        out.append(" ".join(lines[i % len(lines)].split()[::-1]))
    return out


def build_tiny_tokenizer():
    """Train the tiny tokenizer from scratch and return a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    fast.add_special_tokens(
        {"additional_special_tokens": [t for t in SPECIAL_TOKENS if t not in ("<|endoftext|>", "<unk>")]}
    )
    return fast


def split_capitals(tokenizer):
    """The same tokenizer with every capital letter pre-split into its own token (vocabulary unchanged).

    The world's document codes (``K7QX``) then tokenise letter by letter everywhere — in a rendering (one
    character per patch), in a text context and in an answer — so reading a code is copying tokens one for
    one. Used by the world LMs (``LMSettings.split_capitals``); the setting travels in ``tokenizer.json``.
    """
    from tokenizers import Regex, pre_tokenizers

    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Split(Regex("[A-Z]"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    return tokenizer


def load_tiny_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR))


def write_tiny_tokenizer(dst: Path = TINY_TOKENIZER_DIR) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer()
    tok.save_pretrained(str(dst))
    # keep the shipped folder minimal and stable
    for extra in ("special_tokens_map.json",):
        p = dst / extra
        if p.exists():
            p.unlink()
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    write_tiny_tokenizer()
    print(f"wrote {TINY_TOKENIZER_DIR}")
