//! `mandate completions SHELL`: clap's script, plus profile names where a command takes one
//! (bash, zsh, fish), read at completion time from the config's profiles_dir through the
//! hidden `mandate __profiles`.

use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::Shell;

use super::{Cli, Exit, print_bytes};

/// bash: wraps clap's `_mandate`; the profile argument of credential-process, request, env,
/// exec and profiles show/explain completes to profile names.
const BASH: &str = r#"
# Profile names where a command takes one (`mandate __profiles` reads the config's profiles_dir).
# Names are read line by line, never expanded (no `compgen -W`): a file name is not code.
_mandate_profiles() {
    local cur="${COMP_WORDS[COMP_CWORD]}" i w n names sub="" sub2="" cfg=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${COMP_WORDS[i]}"
        case "$w" in
            --config) cfg=(--config "${COMP_WORDS[i+1]}"); ((i++)) ;;
            --config=*) cfg=("$w") ;;
            --agent|--reason|--duration|--timeout|--approval|--profiles) ((i++)) ;;
            -*) ;;
            *) if [[ -z $sub ]]; then sub=$w; elif [[ -z $sub2 ]]; then sub2=$w; else sub2="$sub2 $w"; fi ;;
        esac
    done
    if [[ $cur != -* ]]; then
        case "$sub:$sub2" in
            credential-process:|request:|env:|exec:|profiles:show|profiles:explain)
                COMPREPLY=()
                names=$(mandate "${cfg[@]}" __profiles 2>/dev/null)
                while IFS= read -r n; do
                    [[ -n $n && $n == "$cur"* ]] && COMPREPLY+=("$n")
                done <<< "$names"
                return 0 ;;
        esac
    fi
    _mandate "$@"
}
complete -F _mandate_profiles -o nosort -o bashdefault -o default mandate
"#;

/// zsh: a function for the profile argument, defined before clap's script calls anything.
const ZSH: &str = r#"
_mandate_profiles() {
    local -a names
    names=(${(f)"$(mandate __profiles 2>/dev/null)"})
    compadd -a names
}
"#;

/// fish: profile names for the same commands.
const FISH: &str = r#"
complete -c mandate -n "__fish_mandate_using_subcommand credential-process; or __fish_mandate_using_subcommand request; or __fish_mandate_using_subcommand env; or __fish_mandate_using_subcommand exec" -f -a "(mandate __profiles 2>/dev/null)"
complete -c mandate -n "__fish_mandate_using_subcommand profiles; and __fish_seen_subcommand_from show explain" -f -a "(mandate __profiles 2>/dev/null)"
"#;

pub fn run(shell: Shell) -> Exit {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "mandate", &mut buf);
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    match shell {
        Shell::Bash => text.push_str(BASH),
        Shell::Fish => text.push_str(FISH),
        Shell::Zsh => {
            text = text
                .replace(
                    "-- Profile name:_default'",
                    "-- Profile name:_mandate_profiles'",
                )
                .replace(
                    "-- Profile name (the file stem):_default'",
                    "-- Profile name (the file stem):_mandate_profiles'",
                );
            // After the `#compdef` line: zsh may autoload this file as the body of `_mandate`.
            let at = text.find('\n').map_or(0, |i| i + 1);
            text.insert_str(at, ZSH);
        }
        _ => {}
    }
    print_bytes(text.as_bytes())
}

/// `mandate __profiles`: the profile names of the config's profiles_dir, one per line; nothing
/// (and exit 0) without a config or when the directory cannot be read: completion stays quiet.
/// Only valid profile names are printed (a file name is untrusted text: it must not reach a
/// shell as anything but a word), and there is no fallback to `./profiles`, whose files may be
/// anyone's.
pub fn profile_names(config: Option<PathBuf>) -> Exit {
    let Ok(path) = mandate::config::locate(config.as_deref()) else {
        return Exit::Ok;
    };
    let Ok(c) = mandate::config::read(&path) else {
        return Exit::Ok;
    };
    let Ok(files) = mandate::profile::discover(std::slice::from_ref(&c.profiles_dir)) else {
        return Exit::Ok;
    };
    let mut names: Vec<String> = files
        .iter()
        .filter_map(|f| f.file_stem().and_then(|s| s.to_str()).map(str::to_owned))
        .filter(|n| mandate::profile::ProfileName::parse(n).is_ok())
        .collect();
    names.sort();
    names.dedup();
    let mut out = names.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    print_bytes(out.as_bytes())
}
