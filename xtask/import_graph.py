#!/usr/bin/env python3
"""The import graph of a crate's modules (one node per .rs file) and its circles.

An edge A -> B: file A names an item of module B by a path (`use crate::..`, `super::..`,
`self::..`, a child module's name, in `use` trees and inline). A `mod b;` line alone is
no edge (declaring a module is not using it). Test code is left out: `#[cfg(test)]` modules,
inline or in their own files.

Usage: python3 xtask/import_graph.py probe-user/src [--edges]; exits 1 when there is a
circle (`cargo xtask test` runs it after clippy).
"""
import os
import re
import sys


def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def strip_comments(text):
    """Blanks comments, strings and char literals (a tokenizer, since a quote in a comment
    or a `//` in a string would mislead a regular expression)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            out.append('""')
            i = n if end < 0 else end + 1 + len(hashes)
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            out.append('""')
            i += 1
        elif c == "'":
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:])
            if m:
                out.append("' '")
                i += m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def drop_test_modules(text):
    """Removes `#[cfg(test)] mod x { .. }` blocks; returns the text and the names of
    `#[cfg(test)] mod x;` declarations (their files are left out)."""
    test_files = set(re.findall(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", text))
    out = []
    i = 0
    pat = re.compile(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{")
    while True:
        m = pat.search(text, i)
        if not m:
            out.append(text[i:])
            break
        out.append(text[i:m.start()])
        depth = 1
        j = m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    return "".join(out), test_files


def use_paths(tree, prefix=()):
    """Expands a `use` tree (`a::{b, c::{d as e}}`) into paths."""
    tree = tree.strip()
    depth = 0
    parts = []
    cur = ""
    for ch in tree:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    out = []
    for part in parts:
        part = part.strip()
        if not part:
            continue
        m = re.match(r"^([\w:]*?)(?:::)?\{(.*)\}$", part, re.S)
        if m:
            head = tuple(s for s in m.group(1).split("::") if s)
            out += use_paths(m.group(2), prefix + head)
        else:
            part = re.sub(r"\s+as\s+\w+$", "", part)
            out.append(prefix + tuple(s for s in part.split("::") if s))
    return out


def main():
    src = sys.argv[1]
    files = {}
    for root, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(root, n)
                files[module_of(src, p)] = p
    if not files:
        sys.exit(f"import_graph.py: no .rs file under {src}")
    texts = {}
    test_mods = set()
    children = {m: set() for m in files}
    for mod, p in files.items():
        text = strip_comments(open(p).read())
        text, tests = drop_test_modules(text)
        for t in tests:
            test_mods.add(mod + (t,))
        for c in re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", text, re.M):
            children[mod].add(c)
        texts[mod] = text
    # A test module's own children are test code too.
    mods = [m for m in files if not any(m[: len(t)] == t for t in test_mods)]
    edges = {m: set() for m in mods}

    def resolve(mod, path):
        if not path:
            return None
        if path[0] == "crate":
            full = list(path[1:])
        elif path[0] in ("super", "self"):
            base = list(mod)
            k = 0
            while k < len(path) and path[k] in ("super", "self"):
                if path[k] == "super":
                    base = base[:-1]
                k += 1
            full = base + list(path[k:])
        elif path[0] in children.get(mod, ()):
            full = list(mod) + list(path)
        else:
            return None
        for n in range(len(full), -1, -1):
            cand = tuple(full[:n])
            if cand in edges:
                return cand
        return None

    for mod in mods:
        text = texts[mod]
        paths = []
        for m in re.finditer(r"\buse\s+([^;]+);", text):
            paths += use_paths(m.group(1))
        for m in re.finditer(r"(?<![\w:])((?:crate|super|self|\w+)(?:::\w+)+)", text):
            paths.append(tuple(m.group(1).split("::")))
        for p in paths:
            target = resolve(mod, p)
            if target is not None and target != mod:
                edges[mod].add(target)
    # Tarjan's strongly connected components.
    index = {}
    low = {}
    stack = []
    on = set()
    sccs = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    for v in sorted(edges):
        if v not in index:
            strong(v)
    name = lambda m: os.path.relpath(files[m], src)
    if "--edges" in sys.argv:
        for v in sorted(edges):
            for w in sorted(edges[v]):
                print(f"{name(v)} -> {name(w)}")
    print(f"{len(mods)} modules, {sum(len(e) for e in edges.values())} edges, {len(sccs)} circles")
    for comp in sccs:
        members = set(comp)
        print("circle: " + ", ".join(sorted(name(m) for m in comp)))
        for v in sorted(comp):
            for w in sorted(edges[v] & members):
                print(f"    {name(v)} -> {name(w)}")
    sys.exit(1 if sccs else 0)


main()
