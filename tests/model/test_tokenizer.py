from vistune.model.tokenizer import SPECIAL_TOKENS, build_tiny_tokenizer, load_tiny_tokenizer


def test_shipped_tokenizer_equals_rebuild():
    shipped, rebuilt = load_tiny_tokenizer(), build_tiny_tokenizer()
    assert shipped.get_vocab() == rebuilt.get_vocab()
    text = "<|im_start|>user\n<image>\nWhat is written after CODE? E8L 61X<|im_end|>"
    assert shipped(text)["input_ids"] == rebuilt(text)["input_ids"]


def test_digits_split_and_specials_atomic():
    tok = load_tiny_tokenizer()
    pieces = tok.convert_ids_to_tokens(tok("12345")["input_ids"])
    assert pieces == ["1", "2", "3", "4", "5"]
    for s in SPECIAL_TOKENS:
        assert len(tok(s, add_special_tokens=False)["input_ids"]) == 1, s
    assert tok.decode(tok("any ünïcode ✓ text")["input_ids"]) == "any ünïcode ✓ text"
