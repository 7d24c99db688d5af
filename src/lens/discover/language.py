"""Language detection by file name and shebang, and the canonical language names.

Canonical names are what the index stores and what ``lang:`` filters compare against.
"""

from __future__ import annotations

import posixpath

# Canonical language id -> aliases accepted by ``lang:`` (lower case).
LANGUAGE_ALIASES: dict[str, tuple[str, ...]] = {
    "python": ("py", "python3"),
    "javascript": ("js", "jsx", "node"),
    "typescript": ("ts",),
    "tsx": (),
    "go": ("golang",),
    "rust": ("rs",),
    "java": (),
    "c": ("h",),
    "cpp": ("c++", "cxx", "hpp"),
    "csharp": ("cs", "c#"),
    "ruby": ("rb",),
    "php": (),
    "shell": ("sh", "bash", "zsh"),
    "kotlin": ("kt",),
    "scala": (),
    "swift": (),
    "lua": (),
    "perl": ("pl",),
    "r": (),
    "sql": (),
    "html": ("htm",),
    "css": ("scss", "sass", "less"),
    "markdown": ("md",),
    "json": (),
    "yaml": ("yml",),
    "toml": (),
    "xml": (),
    "makefile": ("make",),
    "dockerfile": ("docker",),
    "assembly": ("asm", "s"),
    "protobuf": ("proto",),
    "text": ("txt",),
}

_ALIAS_TO_CANONICAL: dict[str, str] = {}
for _canon, _aliases in LANGUAGE_ALIASES.items():
    _ALIAS_TO_CANONICAL[_canon] = _canon
    for _alias in _aliases:
        _ALIAS_TO_CANONICAL[_alias] = _canon

_EXTENSIONS: dict[str, str] = {
    ".py": "python",
    ".pyi": "python",
    ".pyw": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".tsx": "tsx",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hpp": "cpp",
    ".hh": "cpp",
    ".hxx": "cpp",
    ".cs": "csharp",
    ".rb": "ruby",
    ".php": "php",
    ".sh": "shell",
    ".bash": "shell",
    ".zsh": "shell",
    ".kt": "kotlin",
    ".kts": "kotlin",
    ".scala": "scala",
    ".swift": "swift",
    ".lua": "lua",
    ".pl": "perl",
    ".pm": "perl",
    ".r": "r",
    ".sql": "sql",
    ".html": "html",
    ".htm": "html",
    ".css": "css",
    ".scss": "css",
    ".sass": "css",
    ".less": "css",
    ".md": "markdown",
    ".markdown": "markdown",
    ".rst": "text",
    ".txt": "text",
    ".json": "json",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".toml": "toml",
    ".xml": "xml",
    ".s": "assembly",
    ".asm": "assembly",
    ".proto": "protobuf",
    ".mk": "makefile",
}

_FILENAMES: dict[str, str] = {
    "makefile": "makefile",
    "gnumakefile": "makefile",
    "dockerfile": "dockerfile",
    "containerfile": "dockerfile",
    "rakefile": "ruby",
    "gemfile": "ruby",
}

_INTERPRETERS: dict[str, str] = {
    "python": "python",
    "python3": "python",
    "python2": "python",
    "node": "javascript",
    "nodejs": "javascript",
    "deno": "typescript",
    "bun": "javascript",
    "sh": "shell",
    "bash": "shell",
    "zsh": "shell",
    "dash": "shell",
    "ksh": "shell",
    "ruby": "ruby",
    "perl": "perl",
    "php": "php",
    "lua": "lua",
    "rscript": "r",
}


def normalize_language(name: str) -> str | None:
    """The canonical id for a language name or alias, or None if unknown."""
    return _ALIAS_TO_CANONICAL.get(name.strip().lower())


def detect_language(path: str, head: bytes = b"") -> str | None:
    """Guess the language from the file name, then from a ``#!`` line in ``head``."""
    base = posixpath.basename(path)
    lower = base.lower()
    if lower in _FILENAMES:
        return _FILENAMES[lower]
    if lower.startswith("dockerfile"):
        return "dockerfile"
    _, ext = posixpath.splitext(lower)
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    if head.startswith(b"#!"):
        first = head.split(b"\n", 1)[0][2:].decode("utf-8", "replace").strip().split()
        if first:
            prog = posixpath.basename(first[0])
            if prog == "env" and len(first) > 1:
                args = [a for a in first[1:] if not a.startswith("-")]
                prog = posixpath.basename(args[0]) if args else prog
            prog = prog.lower().rstrip("0123456789.") or prog.lower()
            return _INTERPRETERS.get(prog) or _INTERPRETERS.get(prog.lower())
    return None
