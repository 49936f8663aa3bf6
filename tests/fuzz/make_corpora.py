#!/usr/bin/env python3
"""make_corpora.py - regenerates the seed corpora and dictionaries of the
fuzz harnesses other than safetensors' (that one is make_corpus.py's):

    tests/fuzz/corpus-config/   config.dict    fuzz_config.c   YAML config
    tests/fuzz/corpus-env/      env.dict       fuzz_env.c      TANDEM_* lines
    tests/fuzz/corpus-npy/      npy.dict       fuzz_npy.c      .npy files
    tests/fuzz/corpus-tokens/   tokens.dict    fuzz_tokens.c   llm.c shards
    tests/fuzz/corpus-state/    state.dict     fuzz_state.c    state.json
    tests/fuzz/corpus-index/    index.dict     fuzz_index.c    index.json
    tests/fuzz/corpus-marker/   marker.dict    fuzz_marker.c   done marker

Each corpus holds valid files and near misses, each near miss breaking one
rule the parser checks (named bad_*; lax_* for the env values strtol
accepts though they are written oddly), and the inputs the fuzzers found
(named found_*, each with the bug it showed).  The option keys, variable
names and enumerated names come from the table in src/core/options.c, so
the config and env seeds follow it.  The .npy and token seeds start from
the files NumPy and llm.c's layout wrote in tests/data/readers.  The
marker seeds list the files fuzz_marker.c makes (MARKER_FILES below).
Python 3 standard library only.

    python3 tests/fuzz/make_corpora.py [PARSER...]   (default: all)
"""
import json
import os
import re
import shutil
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
READERS = os.path.join(TOP, "tests", "data", "readers")


def options_table():
    """[(key, env, kind, [names] or None)] from src/core/options.c."""
    src = open(os.path.join(TOP, "src", "core", "options.c")).read()
    enums = {}
    for m in re.finditer(r'ENUM_NAMES\((\w+),\s*"[^"]*",(.*?)\);', src, re.S):
        enums[m.group(1)] = [None if n.strip() == "NULL" else n.strip()[1:-1]
                             for n in m.group(2).split(",")]
    table = []
    for m in re.finditer(r'\{"(\w+)",\s*"(TANDEM_\w+)",\s*(KIND_\w+),'
                         r'(.*?)\},?\n', src, re.S):
        ref = re.search(r"&(\w+)\s*$", m.group(4).strip())
        table.append((m.group(1), m.group(2), m.group(3),
                      enums.get(ref.group(1)) if ref else None))
    assert table, "no settings found in src/core/options.c"
    return table


def good_value(kind, names, i=0):
    """A valid text for a setting (the i-th of its kind's examples)."""
    if kind == "KIND_ENUM":
        valid = [n for n in names if n is not None]
        return valid[i % len(valid)]
    return {"KIND_BOOL": ["1", "true", "off", "Yes"],
            "KIND_INDEX": ["0", "7", "2147483647", "100000"],
            "KIND_POSITIVE": ["1", "4096", "26214400", "2147483647"],
            "KIND_STRING": ["tandem-%r.log", "/tmp/x %h %p %% %q", "a", "%"]
            }[kind][i % 4]


BAD_VALUES = {"KIND_ENUM": ["", "bogus", "-1", "4"],
              "KIND_BOOL": ["2", "truee", "y", "-0"],
              "KIND_INDEX": ["-1", "2147483648", "12abc", "1.5", "0x10",
                             "5 "],
              "KIND_POSITIVE": ["0", "-0", "99999999999999999999", ""],
              "KIND_STRING": []}
# Accepted, though not written as the documentation writes integers: what
# strtol takes (leading white space, a sign, "-0").
LAX_VALUES = {"KIND_INDEX": [" 5", "+5", "-0"], "KIND_POSITIVE": ["\t7", "+1"]}


def yaml_quote(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_corpus(table):
    c = {}
    c["all_valid.yaml"] = "".join("%s: %s\n" % (k, yaml_quote(good_value(t, n)))
                                  for k, _, t, n in table)
    c["all_other.yaml"] = "".join("%s: %s\n" % (k, good_value(t, n, 1))
                                  for k, _, t, n in table
                                  if t != "KIND_STRING")
    c["empty.yaml"] = ""
    c["comments.yaml"] = "# nothing set\n\n# at all\n"
    c["bad_null_document.yaml"] = "---\n...\n"  # a null, not a mapping
    c["minimal.yaml"] = "log_level: info\n"
    c["flow.yaml"] = "{device: cpu, debug: true, zero_stage: 2}\n"
    c["document.yaml"] = ("%YAML 1.1\n---\nzero_stage: 3\noffload: params\n"
                          "mixed_precision: BF16\n...\n")
    c["anchors.yaml"] = ("bucket_cap_bytes: &n 1048576\n"
                         "first_bucket_bytes: *n\n")
    c["styles.yaml"] = ("log_file: 'a ''quoted'' %r.log'\n"
                        "device: \"c\\x70u\"\n"
                        "cpu_isa: !!str generic\n"
                        "progress: >-\n  poll\n")
    c["block_scalar.yaml"] = "log_file: |\n  line one\n  line two\n"
    c["unicode.yaml"] = "log_file: \"\\u00e9t\\u00e9 \\U0001F600.log\"\n"
    c["bom.yaml"] = "\ufefflog_level: debug\n"
    c["crlf.yaml"] = "log_level: trace\r\ndebug: on\r\n"
    c["duplicate_key.yaml"] = "log_level: info\nlog_level: debug\n"
    # Every pair is checked, a later one of the same key too.
    c["bad_duplicate_first.yaml"] = "log_level: infod\nlog_level: debug\n"
    c["two_documents.yaml"] = "log_level: info\n---\nlog_level: bogus\n"
    c["bad_unknown_key.yaml"] = "log_levle: info\n"
    c["bad_value_list.yaml"] = "log_level: [info]\n"
    c["bad_value_map.yaml"] = "device:\n  kind: cpu\n"
    c["bad_key_list.yaml"] = "[a, b]: 1\n"
    c["bad_top_list.yaml"] = "- log_level: info\n"
    c["bad_top_scalar.yaml"] = "just a string\n"
    c["bad_tab.yaml"] = "log_level:\n\tinfo\n"
    c["bad_unterminated.yaml"] = 'log_file: "no end\n'
    c["bad_indent.yaml"] = "log_level: info\n  debug: 1\n"
    c["bad_alias.yaml"] = "log_level: *nowhere\n"
    c["bad_utf8.yaml"] = b"log_file: \xff\xfe\n"
    c["bad_nul.yaml"] = b"log_level: info\x00\n"
    c["bad_combination.yaml"] = "offload: optimizer\nzero_stage: 0\n"
    c["bad_params_stage.yaml"] = "offload: params\nzero_stage: 2\n"
    for k, _, t, n in table:
        for i, v in enumerate(BAD_VALUES[t][:3]):
            c["bad_%s_%d.yaml" % (k, i)] = "%s: %s\n" % (k, yaml_quote(v))
    return c


def config_dict(table):
    words = set()
    for k, _, t, names in table:
        words.add(k + ": ")
        for n in names or []:
            if n:
                words.add(n)
    words.update(["true", "false", "yes", "no", "on", "off", "2147483647",
                  "2147483648", "-1", "---\n", "...\n", "%YAML 1.1\n",
                  "%TAG ! tag:x,2000:\n", "&a ", "*a", "!!str ", "!!map",
                  "? ", "- ", "{", "}", "[", "]", ", ", "'", '"', "|\n",
                  ">-\n", "# ", "\\x00", "\\u00e9", "\\U0001F600", "\t",
                  "\r\n", "\ufeff", "~", "null", "<<: "])
    return sorted(words)


def env_corpus(table):
    c = {}
    c["all_valid.env"] = "".join("%s=%s\n" % (e, good_value(t, n))
                                 for _, e, t, n in table)
    c["all_other.env"] = "".join("%s=%s\n" % (e, good_value(t, n, 2))
                                 for _, e, t, n in table)
    c["none.env"] = ""
    c["case.env"] = "TANDEM_LOG=DeBuG\nTANDEM_DEBUG=YES\nTANDEM_DEVICE=CPU\n"
    c["empty_values.env"] = "".join("%s=\n" % e for _, e, _, _ in table)
    c["last_wins.env"] = "TANDEM_LOG=bogus\nTANDEM_LOG=info\n"
    c["other_names.env"] = ("PATH=/bin\nTANDEM_NOT_A_SETTING=1\nTANDEM_=x\n"
                            "TANDEM_CONFIG=/etc/passwd\nTANDEM_LOG\n")
    c["nul_ends_value.env"] = b"TANDEM_LOG=info\x00garbage\n"
    c["stages.env"] = "TANDEM_ZERO_STAGE=3\nTANDEM_OFFLOAD=params\n"
    c["bad_combination.env"] = "TANDEM_OFFLOAD=optimizer\nTANDEM_ZERO_STAGE=0\n"
    for _, e, t, n in table:
        for i, v in enumerate(BAD_VALUES[t]):
            c["bad_%s_%d.env" % (e[7:].lower(), i)] = "%s=%s\n" % (e, v)
        for i, v in enumerate(LAX_VALUES.get(t, [])):
            c["lax_%s_%d.env" % (e[7:].lower(), i)] = "%s=%s\n" % (e, v)
    return c


def env_dict(table):
    words = {e + "=" for _, e, _, _ in table}
    for _, _, _, names in table:
        words.update(n for n in names or [] if n)
    words.update(["true", "false", "yes", "no", "on", "off", "2147483647",
                  "2147483648", "-0", "+", " ", "\n", "%r", "%h", "%p"])
    return sorted(words)


# ---- .npy ----

def npy(descr, shape, data, fortran="False", version=1, dict_text=None,
        align=64):
    """The file format.py writes: magic, version, header length, the dict
    padded with spaces to align, '\\n', then data."""
    if dict_text is None:
        s = "(" + ", ".join(str(n) for n in shape) + \
            ("," if len(shape) == 1 else "") + ")"
        dict_text = "{'descr': %r, 'fortran_order': %s, 'shape': %s, }" % (
            descr, fortran, s)
    head = dict_text.encode("latin-1")
    pre = 10 if version == 1 else 12
    pad = (-(pre + len(head) + 1)) % align
    head = head + b" " * pad + b"\n"
    fmt = "<H" if version == 1 else "<I"
    return (b"\x93NUMPY" + bytes([version, 0]) + struct.pack(fmt, len(head)) +
            head + data)


def with_npy_header(blob, edit):
    """blob (a version 1.0 file) with its header text replaced by edit()."""
    n = struct.unpack("<H", blob[8:10])[0]
    head = edit(blob[10:10 + n].decode("latin-1")).encode("latin-1")
    return blob[:8] + struct.pack("<H", len(head)) + head + blob[10 + n:]


def npy_corpus():
    c = {}
    for f in sorted(os.listdir(READERS)):
        if f.endswith(".npy"):  # written by NumPy itself
            c["numpy_" + f] = open(os.path.join(READERS, f), "rb").read()
    f32 = struct.pack("<6f", *range(6))
    c["f4_2x3.npy"] = npy("<f4", (2, 3), f32)
    c["u1_8d.npy"] = npy("|u1", (1, 2, 1, 2, 1, 1, 2, 1), bytes(range(8)))
    c["i8_0x5.npy"] = npy("<i8", (0, 5), b"")
    c["f2_3x0.npy"] = npy("<f2", (3, 0), b"")
    c["f4_big_empty.npy"] = npy("<f4", (0, 2**40, 2**20), b"")
    c["v3.npy"] = npy("<i4", (2,), struct.pack("<2i", 7, -7), version=3)
    c["double_quotes.npy"] = npy("", (), b"\0" * 8, dict_text=(
        '{"descr": "<f8", "fortran_order": False, "shape": ()}'))
    c["order.npy"] = npy("", (), b"\1", dict_text=(
        "{'shape':(1,),'fortran_order':False,'descr':'|u1'}"))
    c["trailing_comma.npy"] = npy("", (), f32, dict_text=(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3,), }"))
    c["unaligned.npy"] = npy("<f4", (1,), f32[:4], align=1)
    base = c["f4_2x3.npy"]
    hdr = lambda e: with_npy_header(base, e)
    c["bad_magic.npy"] = b"\x93NUMPZ" + base[6:]
    c["bad_version.npy"] = base[:6] + b"\x04\x00" + base[8:]
    c["bad_minor.npy"] = base[:6] + b"\x01\x01" + base[8:]
    c["bad_header_len.npy"] = base[:8] + b"\xff\xff" + base[10:]
    c["bad_header_zero.npy"] = base[:8] + b"\x00\x00" + base[10:]
    c["bad_short.npy"] = base[:9]
    c["bad_truncated.npy"] = base[:-4]
    c["bad_extra.npy"] = base + b"\0\0\0\0"
    c["bad_fortran.npy"] = hdr(lambda h: h.replace("False", "True "))
    c["bad_big_endian.npy"] = hdr(lambda h: h.replace("<f4", ">f4"))
    c["bad_dtype.npy"] = hdr(lambda h: h.replace("<f4", "<u2"))
    c["bad_structured.npy"] = npy("", (), b"\0" * 8, dict_text=(
        "{'descr': [('a', '<f4'), ('b', '<i4')], 'fortran_order': False,"
        " 'shape': (1,), }"))
    c["bad_unknown_key.npy"] = hdr(lambda h: h.replace("'shape'", "'shap3'"))
    c["bad_duplicate_key.npy"] = hdr(lambda h: h.replace("'fortran_order'",
                                                         "'descr'        "))
    c["bad_missing_key.npy"] = npy("", (), f32, dict_text=(
        "{'descr': '<f4', 'shape': (2, 3), }"))
    c["bad_not_tuple.npy"] = npy("<f4", (), f32[:4], dict_text=(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1), }"))
    c["bad_negative.npy"] = hdr(lambda h: h.replace("(2, 3)", "(-2, 3)"))
    c["bad_long.npy"] = hdr(lambda h: h.replace("(2, 3)", "(2L, 3)"))
    c["bad_float.npy"] = hdr(lambda h: h.replace("(2, 3)", "(2., 3)"))
    c["bad_overflow.npy"] = hdr(lambda h: h.replace(
        "(2, 3)", "(9223372036854775808, 3)"))
    c["bad_product.npy"] = hdr(lambda h: h.replace(
        "(2, 3)", "(4294967296, 4294967296)"))
    c["bad_9d.npy"] = npy("|u1", (1,) * 9, b"\1")
    c["bad_no_newline.npy"] = hdr(lambda h: h[:-1] + " ")
    c["bad_after_brace.npy"] = hdr(lambda h: h.replace("}", "}x"))
    c["bad_unterminated.npy"] = hdr(lambda h: h.replace("'<f4'", "'<f4 "))
    c["bad_empty_file.npy"] = b""
    return c


def npy_dict():
    return sorted(["\x93NUMPY\x01\x00", "\x93NUMPY\x02\x00", "\x93NUMPY\x03\x00",
                   "{'descr': ", "'fortran_order': ", "'shape': ", "False",
                   "True", "'<f4'", "'<f8'", "'<f2'", "'<i4'", "'<i8'", "'|u1'",
                   "'>f4'", "[('a', '<f4')]", "(", ")", ",)", ", }", "}",
                   "9223372036854775807", "4294967296", "0", " " * 16 + "\n"])


# ---- llm.c token shards ----

MAGIC = 20240520


def shard(tokens, version=1, count=None, magic=MAGIC, seq=3, extra=b""):
    """write_datafile's layout; header[3] (unused by llm.c) picks the
    harness's seq_len (1 + its low 4 bits)."""
    header = [0] * 256
    header[0], header[1] = magic, version
    header[2] = len(tokens) if count is None else count
    header[3] = seq
    body = struct.pack("<%d%s" % (len(tokens), "H" if version == 1 else "I"),
                       *tokens)
    return struct.pack("<256i", *header) + body + extra


def tokens_corpus():
    c = {}
    for f in sorted(os.listdir(READERS)):
        if f.startswith("tok_"):  # llm.c's layout, header[3] = 0
            blob = open(os.path.join(READERS, f), "rb").read()
            if len(blob) <= 4096:
                c["readers_" + f] = blob
    c["v1_10.bin"] = shard([(i * 7 + 3) % 50257 for i in range(10)])
    c["v1_one.bin"] = shard([42], seq=0)
    c["v1_two.bin"] = shard([1, 2], seq=0)
    c["v1_empty.bin"] = shard([])
    c["v2_9.bin"] = shard([70000 + 13 * i for i in range(9)], version=2, seq=1)
    c["v2_seq16.bin"] = shard(list(range(40)), version=2, seq=15)
    c["v2_int32_max.bin"] = shard([2**31 - 1, 0, 5], version=2, seq=0)
    c["bad_v2_above_int32.bin"] = shard([1, 2**31, 3, 4], version=2, seq=0)
    c["bad_v2_u32_max.bin"] = shard([2**32 - 1] * 5, version=2, seq=1)
    c["bad_magic.bin"] = shard([1, 2, 3], magic=MAGIC + 1)
    c["bad_version0.bin"] = shard([1, 2, 3], version=1)[:4] + \
        struct.pack("<i", 0) + shard([1, 2, 3], version=1)[8:]
    c["bad_version3.bin"] = shard([1, 2], version=2)[:4] + \
        struct.pack("<i", 3) + shard([1, 2], version=2)[8:]
    c["bad_negative_count.bin"] = shard([], count=-1)
    c["bad_count_max.bin"] = shard([1, 2], count=2**31 - 1)
    c["bad_truncated.bin"] = shard([1, 2, 3])[:-1]
    c["bad_too_long.bin"] = shard([1, 2, 3], extra=b"\0")
    c["bad_short_header.bin"] = shard([])[:1023]
    c["bad_empty_file.bin"] = b""
    return c


def tokens_dict():
    m = struct.pack("<I", MAGIC)
    return [m, m + b"\x01\x00\x00\x00", m + b"\x02\x00\x00\x00",
            b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\xff\xff\xff\xff",
            b"\x01\x00\x00\x00", b"\x02\x00\x00\x00"]


# ---- checkpoint JSON ----

def state(**edits):
    """A state.json as tdmi_state_dump writes it (key order kept)."""
    s = {"format": "tandem-checkpoint", "format_version": 1,
         "tandem_version": "0.3.0", "step": 60, "world_size": 2,
         "zero_stage": 0, "offload": "none", "mixed_precision": "no",
         "reduce_dtype": "f32", "gradient_accumulation_steps": 1,
         "accumulation_position": 0, "weights_dtype": "param",
         "model_files": 1,
         "optimizer": {"kind": "sgd", "steps": 60, "skipped_steps": 0,
                       "last_skipped": False, "schedule_step": 60,
                       "schedule_factor": 1.0,
                       "loss_scaler": {"enabled": False, "scale": 1.0,
                                       "growth_tracker": 0}},
         "rng_offsets": [[0, 0], [128, 132]], "user_data_bytes": 0,
         "samplers": [{"epoch": 1, "batch": 7}]}
    for k, v in edits.items():
        if v is DROP:
            del s[k]
        else:
            s[k] = v
    return s


DROP = object()


def dumps(obj):
    return json.dumps(obj, indent=2)


def state_corpus():
    c = {}
    opt = state()["optimizer"]
    adam = dict(opt, kind="adamw", steps=1000, skipped_steps=3,
                last_skipped=True, schedule_factor=0.30000000000000004,
                loss_scaler={"enabled": True, "scale": 65536.0,
                             "growth_tracker": 1999})
    c["sgd.json"] = dumps(state())
    c["adamw_fp16.json"] = dumps(state(mixed_precision="fp16", optimizer=adam,
                                       zero_stage=3, offload="params",
                                       weights_dtype="bf16"))
    c["no_optimizer.json"] = dumps(state(optimizer=None, rng_offsets=[]))
    c["v02_no_samplers.json"] = dumps(state(samplers=DROP))
    c["accumulation.json"] = dumps(state(gradient_accumulation_steps=4,
                                         accumulation_position=3))
    c["world3.json"] = dumps(state(world_size=3, model_files=4, rng_offsets=[
        [1, 2, 3], [2**63 - 1, 0, 5]], user_data_bytes=12,
        samplers=[{"epoch": 0, "batch": 0}, {"epoch": 2, "batch": 9}]))
    # The largest world a checkpoint may have, without RNG streams.
    c["world_max.json"] = dumps(state(world_size=2**24, rng_offsets=[]))
    c["compact.json"] = json.dumps(state(), separators=(",", ":"))
    c["integer_reals.json"] = dumps(state(optimizer=dict(
        opt, schedule_factor=2, loss_scaler={"enabled": True, "scale": 1e300,
                                             "growth_tracker": 0})))
    c["bad_format.json"] = dumps(state(format="tandem"))
    c["bad_format_version.json"] = dumps(state(format_version=2))
    c["bad_world_size.json"] = dumps(state(world_size=0))
    c["bad_stage.json"] = dumps(state(zero_stage=4))
    c["bad_offload.json"] = dumps(state(offload="disk"))
    c["bad_position.json"] = dumps(state(accumulation_position=1))
    c["bad_weights_dtype.json"] = dumps(state(weights_dtype="f31"))
    c["bad_model_files.json"] = dumps(state(model_files=0))
    c["bad_kind.json"] = dumps(state(optimizer=dict(opt, kind="rmsprop")))
    c["bad_scale.json"] = dumps(state(optimizer=dict(opt, loss_scaler={
        "enabled": True, "scale": 0.0, "growth_tracker": 0})))
    c["bad_rng_length.json"] = dumps(state(rng_offsets=[[0, 0], [1]]))
    c["bad_rng_negative.json"] = dumps(state(rng_offsets=[[0, -1]]))
    c["bad_sampler.json"] = dumps(state(samplers=[{"epoch": 1}]))
    c["bad_step_real.json"] = dumps(state(step=60.0))
    c["bad_missing_step.json"] = dumps(state(step=DROP))
    c["bad_duplicate_key.json"] = dumps(state()).replace(
        '"step": 60,', '"step": 60, "step": 61,')
    c["bad_truncated.json"] = dumps(state())[:-40]
    c["bad_array.json"] = "[1, 2, 3]\n"
    c["bad_big_integer.json"] = dumps(state()).replace(
        '"step": 60', '"step": 99999999999999999999')
    c["bad_nul.json"] = dumps(state()).replace('"tandem-checkpoint"',
                                               '"tandem\\u0000checkpoint"')
    # found by fuzz_state (the input as it found it): rng_offsets was
    # allocated for world_size offsets per stream before the streams'
    # lengths were checked, 128 MiB for this one short stream.
    c["found_rng_alloc.json"] = dumps(state(
        world_size=2**24, reduce_dtype="f12", rng_offsets=[])).replace(
        '"rng_offsets": []', '"rng_offsets": ["i32"]')
    return c


def state_dict():
    keys = list(state()) + list(state()["optimizer"]) + [
        "enabled", "scale", "growth_tracker", "epoch", "batch"]
    words = ['"%s":' % k for k in keys]
    words += ['"%s"' % n for n in ["tandem-checkpoint", "none", "optimizer",
                                   "params", "no", "bf16", "fp16", "param",
                                   "f32", "f64", "f16", "i32", "i64", "u8",
                                   "sgd", "adam", "adamw", "lion", "custom"]]
    words += ["16777216", "9223372036854775807", "2147483647", "-1", "1e308",
              "0.1", "true", "false", "null", "[]", "{}", "[[0]]",
              '{"epoch":0,"batch":0}', "\\u0000"]
    return words


def index(weight_map, total=96):
    return {"metadata": {"total_size": total}, "weight_map": weight_map}


def index_corpus():
    c = {}
    two = {"fc1.weight": "model-00001-of-00002.safetensors",
           "fc1.bias": "model-00001-of-00002.safetensors",
           "fc2.weight": "model-00002-of-00002.safetensors",
           "fc2.bias": "model-00002-of-00002.safetensors"}
    c["two_shards.json"] = dumps(index(two))
    c["one_shard.json"] = dumps(index({"w": "model.safetensors"}))
    c["interleaved.json"] = dumps(index({"a": "x.st", "b": "y.st", "c": "x.st",
                                         "d": "z.st"}))
    c["no_metadata.json"] = json.dumps({"weight_map": {"w": "a"}})
    c["unicode.json"] = json.dumps(index({"w\u00e9": "mod\u00e8le.safetensors"}))
    c["bad_empty_map.json"] = dumps(index({}))
    c["bad_no_map.json"] = dumps({"metadata": {"total_size": 0}})
    c["bad_map_list.json"] = dumps(index(["model.safetensors"]))
    c["bad_value_int.json"] = dumps(index({"w": 3}))
    c["bad_slash.json"] = dumps(index({"w": "../model.safetensors"}))
    c["bad_absolute.json"] = dumps(index({"w": "/etc/passwd"}))
    c["bad_dot.json"] = dumps(index({"w": ".hidden"}))
    c["bad_empty_name.json"] = dumps(index({"w": ""}))
    c["bad_duplicate_key.json"] = ('{"weight_map": {"w": "a.st", '
                                   '"w": "b.st"}}\n')
    c["bad_truncated.json"] = dumps(index(two))[:-10]
    c["bad_top_array.json"] = "[]\n"
    # found by fuzz_index (the input as it found it): a name with a newline,
    # which load.c's "folder/file\n" list split into a second file, named
    # outside the folder.
    c["found_newline.json"] = (
        b'{\n "weight_map":{\n    "fc1.weig1t": "model-00001-of-0000tensors",'
        b'\n "f": "model-00001-of-00002.safetens;rs",\n "fc2.weight": '
        b'"model-00002-of-00002.safetensors\\nsors",\n    "fc2.bias": '
        b'"model-00002-of-00002.safetensors"\n  }\n}')
    return c


def index_dict():
    return ['"metadata":', '"total_size":', '"weight_map":',
            '"model.safetensors"', '"model-00001-of-00002.safetensors"',
            '"/"', '"."', '".."', '"\\n"', '"\\u0000"', "{}", "[]", "null"]


# ---- the done marker ----

# The files fuzz_marker.c makes in its folder, and their sizes.
MARKER_FILES = [("model.safetensors", 24), ("optimizer.safetensors", 0),
                ("state.json", 3), ("user_data.bin", 7)]


def marker(lines, head="tandem-checkpoint 1\n"):
    return head + "".join("%d %s\n" % (s, n) for n, s in lines)


def marker_corpus():
    c = {}
    c["all.done"] = marker(MARKER_FILES)
    c["one.done"] = marker(MARKER_FILES[:1])
    c["header_only.done"] = marker([])
    c["spaces.done"] = marker([]) + " 24\tmodel.safetensors\n"
    c["bad_no_newline_header.done"] = "tandem-checkpoint 1"
    c["bad_head_spaces.done"] = marker(MARKER_FILES, "tandem-checkpoint  1 \n")
    c["bad_head_blank_line.done"] = marker(MARKER_FILES, "tandem-checkpoint 1\n\n")
    c["bad_size.done"] = marker([("model.safetensors", 23)])
    c["bad_missing.done"] = marker([("model-00001.safetensors", 24)])
    c["bad_version.done"] = marker(MARKER_FILES, "tandem-checkpoint 2\n")
    c["bad_head.done"] = marker(MARKER_FILES, "tandem checkpoint 1\n")
    c["bad_no_final_newline.done"] = marker(MARKER_FILES)[:-1]
    c["bad_slash.done"] = marker([("../state.json", 3)])
    c["bad_dot.done"] = marker([(".state.json", 3)])
    c["bad_negative.done"] = marker([("state.json", -3)])
    c["bad_blank_line.done"] = marker(MARKER_FILES[:1]) + "\n" + \
        marker(MARKER_FILES[1:], "")
    c["bad_long_name.done"] = marker([("x" * 300, 0)])
    c["bad_no_name.done"] = marker([], "tandem-checkpoint 1\n") + "24\n"
    c["bad_empty.done"] = ""
    # found by fuzz_marker (the input as it found it): a NUL byte ended the
    # text the parser saw, and the line after it went unchecked.
    c["found_nul.done"] = (b"tandem-checkpoint 1\n\x00\x00``\x00\x01$\xa0"
                           b".safetensors\n")
    # found by fuzz_marker: sscanf's %d read the version 2^32 + 1 as 1.
    c["found_version_overflow.done"] = "tandem-checkpoint4294967297"
    return c


def marker_dict():
    return ["tandem-checkpoint 1\n"] + ["%d %s\n" % (s, n)
                                        for n, s in MARKER_FILES] + [
        "9223372036854775807", "4294967297", "-", "+", "\t", "\0", "/", "."]


# ---- writing ----

def as_bytes(v):
    return v if isinstance(v, bytes) else v.encode("utf-8")


def dict_line(word):
    """A libFuzzer dictionary entry: "..." with \\\\, \\" and \\xNN."""
    out = []
    for b in as_bytes(word):
        if b in (0x5c, 0x22):
            out.append("\\" + chr(b))
        elif 0x20 <= b < 0x7f:
            out.append(chr(b))
        else:
            out.append("\\x%02X" % b)
    return '"' + "".join(out) + '"\n'


def write(parser, files, words, what):
    out = os.path.join(HERE, "corpus-" + parser)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    for name, blob in sorted(files.items()):
        assert len(as_bytes(blob)) < 4096, name
        with open(os.path.join(out, name), "wb") as fp:
            fp.write(as_bytes(blob))
    with open(os.path.join(HERE, parser + ".dict"), "w") as fp:
        fp.write("# fuzz_%s.c: %s (libFuzzer -dict; written by "
                 "make_corpora.py)\n" % (parser, what))
        for w in words:
            fp.write(dict_line(w))
    print("make_corpora: %d files in %s" % (len(files), out))


def main():
    table = options_table()
    parsers = {
        "config": lambda: (config_corpus(table), config_dict(table),
                           "keys, names and YAML syntax"),
        "env": lambda: (env_corpus(table), env_dict(table),
                        "variable names and values"),
        "npy": lambda: (npy_corpus(), npy_dict(), "the header's tokens"),
        "tokens": lambda: (tokens_corpus(), tokens_dict(),
                           "the header's words"),
        "state": lambda: (state_corpus(), state_dict(), "keys and names"),
        "index": lambda: (index_corpus(), index_dict(), "keys and names"),
        "marker": lambda: (marker_corpus(), marker_dict(), "its lines"),
    }
    wanted = sys.argv[1:] or list(parsers)
    for p in wanted:
        if p not in parsers:
            sys.exit("make_corpora: unknown parser %s (one of %s)" %
                     (p, ", ".join(parsers)))
        files, words, what = parsers[p]()
        write(p, files, words, what)


if __name__ == "__main__":
    main()
