#!/usr/bin/env python3
"""Generate broker/src/kafka/bounds/schema.rs from the kafka-protocol crate.

The crate's request decoders (src/messages/*_request.rs, the `Decodable`
impls) are themselves generated from Kafka's JSON message specs, and they
spell out, field by field, what the decoder reads at each version. This
script parses those decoders and writes a table that Ferry's bounds guard
(broker/src/kafka/bounds.rs) walks before the crate's decoder runs.

Usage:
    scripts/gen-kafka-bounds.py [CRATE_DIR] > broker/src/kafka/bounds/schema.rs

CRATE_DIR defaults to the kafka-protocol 0.18.0 source in the cargo registry
(run `cargo fetch` first). The script fails loudly on any decoder shape it
does not understand, rather than guessing.
"""

import glob
import os
import re
import sys

CRATE_VERSION = "0.18.0"

# The API keys the guard covers: (key, ApiKey name). The request file is
# src/messages/<snake_case(name)>_request.rs.
APIS = [
    (0, "Produce"),
    (1, "Fetch"),
    (2, "ListOffsets"),
    (3, "Metadata"),
    (8, "OffsetCommit"),
    (9, "OffsetFetch"),
    (10, "FindCoordinator"),
    (11, "JoinGroup"),
    (12, "Heartbeat"),
    (13, "LeaveGroup"),
    (14, "SyncGroup"),
    (15, "DescribeGroups"),
    (16, "ListGroups"),
    (17, "SaslHandshake"),
    (18, "ApiVersions"),
    (19, "CreateTopics"),
    (20, "DeleteTopics"),
    (22, "InitProducerId"),
    (23, "OffsetForLeaderEpoch"),
    (24, "AddPartitionsToTxn"),
    (25, "AddOffsetsToTxn"),
    (26, "EndTxn"),
    (28, "TxnOffsetCommit"),
    (29, "DescribeAcls"),
    (30, "CreateAcls"),
    (31, "DeleteAcls"),
    (32, "DescribeConfigs"),
    (33, "AlterConfigs"),
    (36, "SaslAuthenticate"),
    (37, "CreatePartitions"),
    (42, "DeleteGroups"),
    (44, "IncrementalAlterConfigs"),
    (47, "OffsetDelete"),
    (60, "DescribeCluster"),
    (61, "DescribeProducers"),
    (65, "DescribeTransactions"),
    (66, "ListTransactions"),
]

# The schema's vocabulary (`Ty` and `Elem` in bounds.rs) is just what the
# covered requests read; a request that reads anything else (UInt16,
# Float64, OptionStruct, other array elements) stops the script, and both
# the vocabulary and the walker in bounds.rs need the new type first.

# Fixed-size primitives: crate type name -> schema type name.
FIXED = {
    "Boolean": "Bool",
    "Int8": "Int8",
    "Int16": "Int16",
    "Int32": "Int32",
    "Int64": "Int64",
    "Uuid": "Uuid",
}
# Length-prefixed primitives: crate type -> (schema type, compact?).
PREFIXED = {
    "String": ("Str", False),
    "CompactString": ("Str", True),
    "Bytes": ("Bytes", False),
    "CompactBytes": ("Bytes", True),
}
# Array element types the guard knows: crate type -> (Elem name, compact?),
# where compact is None when the element has no compact form.
ELEMS = {
    "Int32": ("Int32", None),
    "Int64": ("Int64", None),
    "String": ("Str", False),
    "CompactString": ("Str", True),
}


class ParseError(Exception):
    pass


def snake(name):
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def upper_snake(name):
    return snake(name).upper()


TOKEN = re.compile(
    r"""\s+|//[^\n]*|"(?:[^"\\]|\\.)*"|[A-Za-z_][A-Za-z0-9_]*|\d+
    |::|>=|<=|==|!=|&&|\|\||=>|\.\.|->|[{}()\[\];:,.=<>?!&|+\-*/]""",
    re.VERBOSE,
)


def tokenize(text):
    out, pos = [], 0
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m:
            raise ParseError(f"cannot tokenize at {text[pos:pos + 40]!r}")
        tok = m.group(0)
        pos = m.end()
        if not tok.isspace() and not tok.startswith("//"):
            out.append(tok)
    return out


class Parser:
    def __init__(self, toks, where):
        self.t, self.i, self.where = toks, 0, where

    def peek(self, k=0):
        return self.t[self.i + k] if self.i + k < len(self.t) else None

    def next(self):
        tok = self.peek()
        self.i += 1
        return tok

    def expect(self, *toks):
        for want in toks:
            got = self.next()
            if got != want:
                raise ParseError(f"{self.where}: expected {want!r}, got {got!r} at token {self.i}")

    def skip_balanced(self):
        """Skips one token, or a whole bracketed group if it opens one."""
        pairs = {"{": "}", "(": ")", "[": "]"}
        tok = self.next()
        if tok in pairs:
            depth = 1
            while depth:
                t = self.next()
                if t is None:
                    raise ParseError(f"{self.where}: unbalanced {tok}")
                if t in pairs:
                    depth += 1
                elif t in pairs.values():
                    depth -= 1

    def skip_to_statement_end(self):
        """Skips a default-value expression: up to `;` or a closing `}`."""
        while self.peek() not in (";", "}"):
            if self.peek() is None:
                raise ParseError(f"{self.where}: runaway expression")
            self.skip_balanced()

    # Conditions are `version OP N` joined by `&&` or `||`; they become
    # predicates over the version.
    def cond(self):
        terms, joins = [], []
        while True:
            self.expect("version")
            op = self.next()
            n = int(self.next())
            if op not in (">=", "<=", "==", "!=", "<", ">"):
                raise ParseError(f"{self.where}: unknown comparison {op}")
            terms.append((op, n))
            if self.peek() in ("&&", "||"):
                joins.append(self.next())
            else:
                break
        if len(set(joins)) > 1:
            raise ParseError(f"{self.where}: mixed && and ||")
        ops = {
            ">=": lambda v, n: v >= n,
            "<=": lambda v, n: v <= n,
            "==": lambda v, n: v == n,
            "!=": lambda v, n: v != n,
            "<": lambda v, n: v < n,
            ">": lambda v, n: v > n,
        }
        combine = any if joins and joins[0] == "||" else all
        return lambda v: combine(ops[op](v, n) for op, n in terms)

    # A read is `types::T.decode(buf)?` with T one of: a primitive,
    # Array(E), CompactArray(E), Struct { version }, OptionStruct { version }.
    def read_type(self):
        self.expect("types", "::")
        name = self.next()
        if name in ("Array", "CompactArray"):
            self.expect("(")
            inner = self.read_type()
            self.expect(")")
            return (name, inner)
        if name in ("Struct", "OptionStruct"):
            # OptionStruct is parsed, then refused as outside the vocabulary.
            self.expect("{", "version", "}")
            return (name,)
        return (name,)

    def read(self):
        ty = self.read_type()
        self.expect(".", "decode", "(", "buf", ")", "?")
        return ty

    def expr(self):
        """An expression as a function version -> read type (None: no read)."""
        if self.peek() == "if":
            self.next()
            c = self.cond()
            self.expect("{")
            then = self.expr()
            self.expect("}", "else")
            if self.peek() == "if":
                other = self.expr()
            else:
                self.expect("{")
                other = self.expr()
                self.expect("}")
            return lambda v: then(v) if c(v) else other(v)
        if self.peek() == "types":
            ty = self.read()
            return lambda v: ty
        self.skip_to_statement_end()
        return lambda v: None


class Decoder:
    """What one `impl Decodable` reads."""

    def __init__(self, name):
        self.name = name
        self.versions = None  # (min, max)
        self.fields = []  # (field name, version -> read type)
        self.flexible = None  # first flexible version
        self.tags = []  # (tag, field name, version -> bool, version -> read type)


def parse_decoder(name, toks, where):
    p = Parser(toks, where)
    # fn decode<B: ByteBuf>(buf: &mut B, version: i16) -> Result<Self> {
    while p.peek() != "{":
        p.next()
    p.expect("{")
    d = Decoder(name)
    while True:
        tok = p.peek()
        if tok == "if":
            p.next()
            c = p.cond()
            p.expect("{")
            if p.peek() == "bail":
                ok = [v for v in range(-1, 200) if not c(v)]
                d.versions = (min(ok), max(ok))
                if ok != list(range(ok[0], ok[-1] + 1)):
                    raise ParseError(f"{where}: version range not contiguous")
                p.i -= 1
                p.skip_balanced()
            elif p.peek(1) == "num_tagged_fields":
                d.flexible = min(v for v in range(0, 200) if c(v))
                if not all(c(v) for v in range(d.flexible, 200)):
                    raise ParseError(f"{where}: flexible versions not open-ended")
                parse_tagged(p, d, where)
                p.expect("}")
            else:
                raise ParseError(f"{where}: unexpected if-block at token {p.i}")
        elif tok == "let" and p.peek(1) == "num_tagged_fields":
            # Flexible in every version: the section is not behind an `if`.
            d.flexible = d.versions[0]
            parse_tagged(p, d, where)
        elif tok == "let":
            p.next()
            if p.peek() == "mut":
                p.next()
            field = p.next()
            p.expect("=")
            e = p.expr()
            p.expect(";")
            d.fields.append((field, e))
        elif tok == "Ok":
            break
        else:
            raise ParseError(f"{where}: unexpected statement start {tok!r}")
    if d.versions is None:
        raise ParseError(f"{where}: no version check")
    return d


def parse_tagged(p, d, where):
    # let num_tagged_fields = types::UnsignedVarInt.decode(buf)?;
    # for _ in 0..num_tagged_fields { let tag: u32 = ...; let size: u32 = ...; BODY }
    p.expect("let", "num_tagged_fields", "=")
    p.read()
    p.expect(";", "for", "_", "in", "0", "..", "num_tagged_fields", "{")
    for var in ("tag", "size"):
        p.expect("let", var, ":", "u32", "=")
        p.read()
        p.expect(";")
    if p.peek() == "match":
        p.expect("match", "tag", "{")
        while p.peek() != "}":
            arm = p.next()
            p.expect("=>", "{")
            if arm == "_":
                while p.peek() != "}":
                    p.skip_balanced()
                p.expect("}")
                continue
            tag = int(arm)
            if p.peek() == "if":
                p.next()
                c = p.cond()
                p.expect("{")
                field = p.next()
                p.expect("=")
                ty = p.read()
                p.expect(";", "}", "else", "{", "bail")
                p.i -= 1
                while p.peek() != "}":
                    p.skip_balanced()
                p.expect("}")
            else:
                c = lambda v: True
                field = p.next()
                p.expect("=")
                ty = p.read()
                p.expect(";")
            p.expect("}")
            d.tags.append((tag, field, c, ty))
        p.expect("}")
    else:
        # let unknown_value = ...; unknown_tagged_fields.insert(...);
        while p.peek() != "}":
            p.skip_balanced()
    p.expect("}")


def parse_file(path):
    text = open(path).read()
    where = os.path.basename(path)
    # Field types, from the struct definitions.
    rust_types = {}
    for m in re.finditer(r"^pub struct (\w+) \{\n(.*?)^\}", text, re.M | re.S):
        rust_types[m.group(1)] = dict(re.findall(r"^    pub (\w+): (.+),$", m.group(2), re.M))
    decoders = {}
    for m in re.finditer(r"^impl Decodable for (\w+) \{\n(.*?)^\}", text, re.M | re.S):
        name = m.group(1)
        decoders[name] = parse_decoder(name, tokenize(m.group(2)), f"{where}:{name}")
    roots = re.findall(r"^impl HeaderVersion for (\w+) \{", text, re.M)
    if len(roots) != 1:
        raise ParseError(f"{where}: expected one request struct, found {roots}")
    return decoders, rust_types, roots[0]


def element_struct(rust_type, where):
    """The struct named by a field's Rust type: Vec<X>, Option<Vec<X>>, X, Option<X>."""
    m = re.fullmatch(r"(?:Option<)?(?:Vec<)?(\w+)>*", rust_type)
    if not m:
        raise ParseError(f"{where}: cannot find struct in {rust_type}")
    return m.group(1)


class Emitter:
    def __init__(self, decoders, rust_types, where):
        self.decoders, self.rust_types, self.where = decoders, rust_types, where

    def schema_type(self, struct, field, read, v, compact_expected):
        """The schema's Ty for one read at version v."""
        where = f"{self.where}:{struct}.{field}@v{v}"
        rust_type = self.rust_types[struct][field]
        nullable = rust_type.startswith("Option<")
        kind = read[0]

        def check_compact(compact):
            if compact != compact_expected:
                raise ParseError(f"{where}: compact={compact} but flexible={compact_expected}")

        if kind in FIXED:
            return FIXED[kind], []
        if kind in PREFIXED:
            base, compact = PREFIXED[kind]
            check_compact(compact)
            return ("Nullable" + base if nullable else base), []
        if kind in ("Array", "CompactArray"):
            check_compact(kind == "CompactArray")
            inner = read[1]
            deps = []
            if inner[0] == "Struct":
                elem_struct = element_struct(rust_type, where)
                elem = f"Elem::Struct(&{upper_snake(elem_struct)})"
                deps.append(elem_struct)
            elif inner[0] in ELEMS:
                name, compact = ELEMS[inner[0]]
                if compact is not None:
                    check_compact(compact)
                elem = f"Elem::{name}"
            else:
                raise ParseError(f"{where}: unknown array element {inner}")
            return (f"NullableArray({elem})" if nullable else f"Array({elem})"), deps
        if kind == "Struct":
            s = element_struct(rust_type, where)
            return f"Struct(&{upper_snake(s)})", [s]
        raise ParseError(f"{where}: unknown read {read}")

    def struct(self, name, versions):
        d = self.decoders[name]
        if d.versions != versions:
            raise ParseError(f"{self.where}:{name}: versions {d.versions} differ from {versions}")
        lo, hi = versions
        flex = d.flexible if d.flexible is not None else hi + 1
        deps, rows = [], []
        for field, e in d.fields:
            # Group consecutive versions that read the same schema type.
            runs = []
            for v in range(lo, hi + 1):
                read = e(v)
                ty = None
                if read is not None:
                    ty, more = self.schema_type(name, field, read, v, v >= flex)
                    deps += more
                if runs and runs[-1][2] == ty and runs[-1][1] == v - 1:
                    runs[-1][1] = v
                else:
                    runs.append([v, v, ty])
            for a, b, ty in runs:
                if ty is not None:
                    rows.append(f'f("{field}", {a}, {b}, {ty})')
        tags = []
        for tag, field, c, read in d.tags:
            ok = [v for v in range(flex, hi + 1) if c(v)]
            if not ok or ok != list(range(ok[0], ok[-1] + 1)):
                raise ParseError(f"{self.where}:{name}: tag {tag} versions not contiguous")
            ty, more = self.schema_type(name, field, read, ok[0], True)
            deps += more
            tags.append(f'tag({tag}, "{field}", {ok[0]}, {ok[-1]}, {ty})')
        flexible = f"Some({d.flexible})" if d.flexible is not None else "None"
        return deps, rows, tags, flexible


def emit_api(out, key, api, path):
    decoders, rust_types, root = parse_file(path)
    versions = decoders[root].versions
    em = Emitter(decoders, rust_types, os.path.basename(path))
    module = snake(api)
    # Emit the root and every struct it reaches, each once, in reach order.
    order, pending, seen = [], [root], set()
    bodies = {}
    while pending:
        name = pending.pop(0)
        if name in seen:
            continue
        seen.add(name)
        order.append(name)
        deps, rows, tags, flexible = em.struct(name, versions)
        bodies[name] = (rows, tags, flexible)
        pending += deps
    out.append(f"mod {module} {{")
    out.append("    use super::*;")
    for name in order:
        rows, tags, flexible = bodies[name]
        vis = "pub(super) " if name == root else ""
        out.append("")
        out.append(f"    {vis}static {upper_snake(name)}: StructSchema = StructSchema {{")
        out.append(f'        name: "{name}",')
        out.append(f"        flexible: {flexible},")
        out.append("        fields: &[")
        out += [f"            {r}," for r in rows]
        out.append("        ],")
        if tags:
            out.append("        tags: &[")
            out += [f"            {t}," for t in tags]
            out.append("        ],")
        else:
            out.append("        tags: &[],")
        out.append("    };")
    out.append("}")
    out.append("")
    return (key, api, versions, f"{module}::{upper_snake(root)}")


def main():
    default = os.path.expanduser(
        f"~/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/kafka-protocol-{CRATE_VERSION}"
    )
    crate = sys.argv[1] if len(sys.argv) > 1 else default
    toml = open(os.path.join(crate, "Cargo.toml")).read()
    if f'version = "{CRATE_VERSION}"' not in toml:
        raise SystemExit(f"{crate} is not kafka-protocol {CRATE_VERSION}")
    if not glob.glob(os.path.join(crate, "src/messages/*_request.rs")):
        raise SystemExit(f"no request decoders under {crate}/src/messages")
    modules, apis = [], []
    for key, api in APIS:
        path = os.path.join(crate, "src/messages", f"{snake(api)}_request.rs")
        apis.append(emit_api(modules, key, api, path))
    out = [
        f"//! GENERATED by scripts/gen-kafka-bounds.py from kafka-protocol {CRATE_VERSION}",
        "//! (src/messages/*_request.rs, the `Decodable` impls). Do not edit by hand:",
        "//! rerun the script when the crate is upgraded.",
        "//!",
        "//! Each request struct lists, in wire order, the fields its decoder reads:",
        '//! `f("name", first_version, last_version, type)`. Strings, bytes and arrays',
        "//! use the compact (varint) encoding from the struct's first flexible",
        "//! version on, where a tagged-field section also ends the struct; `tags` are",
        "//! the tagged fields the crate decodes itself (other tags it skips).",
        "",
        "use super::{Api, Elem, StructSchema, Ty::*, f, tag};",
        "",
        "/// The covered requests: (API key, name, first and last version, body).",
        "pub(super) static APIS: &[Api] = &[",
    ]
    for key, api, (lo, hi), root in apis:
        out.append(f'    Api {{ key: {key}, name: "{api}", versions: ({lo}, {hi}), body: &{root} }},')
    out.append("];")
    out.append("")
    out += modules
    sys.stdout.write("\n".join(out).rstrip("\n") + "\n")


if __name__ == "__main__":
    try:
        main()
    except ParseError as e:
        raise SystemExit(f"gen-kafka-bounds: {e}")
