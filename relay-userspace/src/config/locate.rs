//! Finding the line of a key path in block-style YAML, for errors found after deserialisation
//! (serde_yaml reports positions only while parsing).

/// One step of a key path: a mapping key or a sequence index.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        for index in rest.split('[').filter(|s| !s.is_empty()) {
            if let Ok(i) = index.trim_end_matches(']').parse() {
                out.push(Step::Index(i));
            }
        }
    }
    out
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_content(line: &str) -> bool {
    let t = line.trim_start();
    !t.is_empty() && !t.starts_with('#')
}

/// The 1-based line where `path` (as printed by serde_path_to_error, e.g. `api.tokens[1].name`)
/// is written, or `None` when it cannot be followed (flow style, anchors, missing keys).
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    // The block we search in: lines [start, end) deeper than `parent_indent`.
    let (mut start, mut end) = (0usize, lines.len());
    let mut parent_indent: Option<usize> = None;
    let mut found = None;
    for step in steps(path) {
        let deeper = |l: &str| parent_indent.is_none_or(|p| indent(l) > p);
        let mut hit = None;
        match step {
            Step::Key(key) => {
                for (i, line) in lines.iter().enumerate().take(end).skip(start) {
                    if !is_content(line) || !deeper(line) {
                        continue;
                    }
                    let t = line.trim_start().trim_start_matches("- ");
                    if t.strip_prefix(key).is_some_and(|r| r.starts_with(':')) {
                        // The key's own indentation: inside "- key:" it is after the dash.
                        let col = indent(line) + (line.trim_start().len() - t.len());
                        hit = Some((i, col));
                        break;
                    }
                }
            }
            Step::Index(n) => {
                let mut seen = 0;
                for (i, line) in lines.iter().enumerate().take(end).skip(start) {
                    if !is_content(line) || !deeper(line) {
                        continue;
                    }
                    if line.trim_start().starts_with("- ") || line.trim() == "-" {
                        if seen == n {
                            hit = Some((i, indent(line)));
                            break;
                        }
                        seen += 1;
                    }
                }
            }
        }
        let (i, col) = hit?;
        found = Some(i + 1);
        // Next step searches this entry's block: following lines indented deeper than it,
        // plus, for "- key: value", the entry's own line.
        let block_end = lines
            .iter()
            .enumerate()
            .skip(i + 1)
            .find(|(_, l)| is_content(l) && indent(l) <= col.min(indent(lines[i])))
            .map_or(lines.len(), |(j, _)| j);
        start = i;
        end = block_end;
        parent_indent = Some(col.saturating_sub(1).min(col));
        if matches!(step, Step::Key(_)) {
            start = i + 1;
            parent_indent = Some(col);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
relay:
  port: 6081
api:
  listen: 127.0.0.1:8080
  tokens:
    - name: alice
      token: aaaa
      max_sessions: 10
    - name: bob
      # a comment
      max_sessions: 20
sessions:
  idle_lifetime: 5m
";

    #[test]
    fn finds_nested_keys_and_sequence_entries() {
        assert_eq!(line_of(YAML, "relay.port"), Some(2));
        assert_eq!(line_of(YAML, "api.listen"), Some(4));
        assert_eq!(line_of(YAML, "api.tokens"), Some(5));
        assert_eq!(line_of(YAML, "api.tokens[0]"), Some(6));
        assert_eq!(line_of(YAML, "api.tokens[0].name"), Some(6));
        assert_eq!(line_of(YAML, "api.tokens[0].max_sessions"), Some(8));
        assert_eq!(line_of(YAML, "api.tokens[1].max_sessions"), Some(11));
        assert_eq!(line_of(YAML, "sessions.idle_lifetime"), Some(13));
    }

    #[test]
    fn missing_keys_are_none() {
        assert_eq!(line_of(YAML, "relay.listen"), None);
        assert_eq!(line_of(YAML, "api.tokens[2]"), None);
        assert_eq!(line_of(YAML, "nothing"), None);
    }
}
