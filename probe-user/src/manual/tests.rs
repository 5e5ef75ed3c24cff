use super::*;

fn section<'a>(page: &'a str, name: &str) -> &'a str {
    let start = page
        .find(&format!(".SH {name}\n"))
        .unwrap_or_else(|| panic!("no {name} in\n{page}"));
    let rest = &page[start + 5 + name.len()..];
    &rest[..rest.find("\n.SH ").unwrap_or(rest.len())]
}

#[test]
fn every_page_has_exit_status_examples_and_see_also() {
    for command in std::iter::once(None).chain(PAGES.iter().map(|p| Some(*p))) {
        let page = render(command).unwrap();
        for name in [
            "NAME",
            "SYNOPSIS",
            "OPTIONS",
            "\"EXIT STATUS\"",
            "EXAMPLES",
            "\"SEE ALSO\"",
        ] {
            assert!(
                page.contains(&format!(".SH {name}\n")),
                "{command:?}: {name}"
            );
        }
        assert!(!examples(command).is_empty(), "{command:?}");
    }
}

/// drainwatch(1) is not bare: a line per command with its flags, and its EXIT STATUS
/// names `incomplete`; "upstream" is defined where the roles are named.
#[test]
fn the_main_page_has_each_synopsis_incomplete_and_the_roles() {
    let page = render(None).unwrap();
    let synopsis = section(&page, "SYNOPSIS");
    for name in PAGES {
        assert!(
            synopsis.contains(&format!("\\fBdrainwatch {}\\fR", roff(name))),
            "{name}: {synopsis}"
        );
    }
    assert!(
        synopsis.contains("\\fB\\-\\-kill\\-after\\fR"),
        "{synopsis}"
    );
    assert!(
        section(&page, "\"EXIT STATUS\"").contains("incomplete"),
        "{page}"
    );
    let description = section(&page, "DESCRIPTION");
    assert!(description.contains("upstream"), "{description}");
    let watch = render(Some("watch")).unwrap();
    assert!(
        section(&watch, "DESCRIPTION").contains("upstream"),
        "{watch}"
    );
}

#[test]
fn the_synopsis_names_every_value() {
    let page = render(Some("stop")).unwrap();
    let synopsis = section(&page, "SYNOPSIS");
    assert!(
        synopsis.contains("[\\fB\\-\\-signal\\fR \\fISIGNAL\\fR]"),
        "{synopsis}"
    );
    assert!(
        synopsis.contains("(\\fB\\-\\-pid\\fR \\fIPID\\fR | "),
        "{synopsis}"
    );
    assert!(
        synopsis.contains("[\\fB\\-\\-kill\\-after\\fR]"),
        "{synopsis}"
    );
    let audit = render(Some("audit")).unwrap();
    assert!(
        section(&audit, "SYNOPSIS").contains("[\\fB\\-\\-\\fR \\fICMD\\fR...]"),
        "{audit}"
    );
}

#[test]
fn a_description_never_repeats_the_name_line() {
    for command in std::iter::once(None).chain(PAGES.iter().map(|p| Some(*p))) {
        let page = render(command).unwrap();
        let name_line = section(&page, "NAME").trim().to_string();
        if let Some(start) = page.find(".SH DESCRIPTION\n") {
            let description = &page[start..];
            let about = name_line.split(" \\- ").nth(1).unwrap_or_default();
            assert!(
                !description.starts_with(&format!(".SH DESCRIPTION\n{about}")),
                "{command:?}"
            );
        }
    }
}

/// drainwatch(1) lists only pages the README installs, and the README installs them all.
#[test]
fn the_readme_installs_every_page() {
    let readme = include_str!("../../../README.md");
    let line = readme
        .lines()
        .find(|l| l.starts_with("for c in ") && l.contains("; do"))
        .expect("the README's install loop");
    let installed: Vec<&str> = line["for c in ".len()..line.find("; do").unwrap()]
        .split_whitespace()
        .collect();
    assert_eq!(installed, PAGES);
    let mut cli = command_for_pages();
    cli.build();
    let commands: Vec<&str> = cli.get_subcommands().map(|c| c.get_name()).collect();
    assert_eq!(commands, PAGES);
}

/// The bash script, sourced by a real bash, completes pids, signals and man pages.
#[test]
fn bash_completes_pids_signals_and_pages() {
    let mut script = Vec::new();
    clap_complete::generate(
        clap_complete::Shell::Bash,
        &mut command(),
        "drainwatch",
        &mut script,
    );
    let mut script = String::from_utf8(script).unwrap();
    script.push_str(&bash_dynamic_completion());
    let complete = |words: &str| -> String {
        let program = format!(
            "{script}\nCOMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             _drainwatch_dynamic drainwatch; echo \"${{COMPREPLY[*]}}\""
        );
        let out = std::process::Command::new("bash")
            .args(["-c", &program])
            .output()
            .expect("bash runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let me = std::process::id().to_string();
    let pids = complete(&format!("drainwatch stop --pid {}", &me[..1]));
    assert!(pids.split(' ').any(|p| p == me), "{pids}");
    assert_eq!(complete("drainwatch stop --signal QU"), "QUIT");
    assert!(!complete("drainwatch stop --signal K").contains("KILL"));
    assert_eq!(complete("drainwatch man st"), "stop");
    assert!(
        complete("drainwatch sto").contains("stop"),
        "falls back to clap's"
    );
}

#[test]
fn help_ends_with_examples() {
    let mut cli = command();
    let stop = cli.find_subcommand_mut("stop").unwrap();
    let help = stop.render_long_help().to_string();
    assert!(
        help.contains("Examples:\n  drainwatch stop --pid"),
        "{help}"
    );
}

/// The paths ending in `.md` in `text` (roff's `\-` read as `-`).
fn document_names(text: &str) -> Vec<String> {
    let text = text.replace("\\-", "-");
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/');
    text.split(|c: char| !allowed(c))
        .map(|word| word.trim_end_matches('.'))
        .filter(|word| word.ends_with(".md") && word.len() > 3)
        .map(str::to_string)
        .collect()
}

/// The relative link targets of a Markdown text, without their `#anchor`.
fn relative_links(markdown: &str) -> Vec<&str> {
    markdown
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split([')', ' ']).next())
        .map(|link| link.split('#').next().unwrap_or_default())
        .filter(|link| !link.is_empty() && !link.contains("://") && !link.starts_with("mailto:"))
        .collect()
}

fn markdown_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            markdown_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
}

/// Every document the man pages and `--help` name, and every relative link of the
/// repository's Markdown, leads to a file (issue #27: links to DESIGN.md and
/// docs/policy.md led nowhere).
#[test]
fn every_named_document_and_relative_link_exists() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut text = String::new();
    for command in std::iter::once(None).chain(PAGES.iter().map(|p| Some(*p))) {
        text.push_str(&render(command).unwrap());
    }
    let mut cli = command();
    text.push_str(&cli.render_long_help().to_string());
    for sub in PAGES {
        let sub = cli.find_subcommand_mut(sub).unwrap();
        text.push_str(&sub.render_long_help().to_string());
    }
    let named = document_names(&text);
    assert!(named.iter().any(|n| n == "docs/policy.md"), "{named:?}");
    for name in named {
        assert!(
            root.join(&name).is_file(),
            "the manual names {name}, not a file"
        );
    }
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    assert!(files.len() > 5, "{files:?}");
    for file in files {
        let markdown = std::fs::read_to_string(&file).unwrap();
        for link in relative_links(&markdown) {
            let target = file.parent().unwrap().join(link);
            assert!(
                target.exists(),
                "{}: link {link} leads nowhere",
                file.display()
            );
        }
    }
}
