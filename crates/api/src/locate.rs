//! Best-effort mapping from a field path (`spec.http[0].route[1].weight`)
//! to the line of a YAML document that holds it, so problems can point at a
//! line. Handles block style (including Kubernetes' unindented lists) and
//! stops at flow collections (`{host: a, subset: v1}`), whose line is
//! returned. When a segment cannot be found, the deepest line found so far
//! is returned.

/// One path segment.
#[derive(Debug, PartialEq, Eq)]
enum Seg<'a> {
    Key(&'a str),
    Idx(usize),
}

fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(Seg::Idx(i));
            }
        }
    }
    out
}

struct Line<'a> {
    /// 1-based line number within the document text.
    no: usize,
    indent: usize,
    text: &'a str,
}

/// Removes leading `- ` item markers: `(indent of the content, content)`.
fn strip_dashes(indent: usize, text: &str) -> (usize, &str) {
    let mut ind = indent;
    let mut t = text;
    while let Some(rest) = t.strip_prefix("- ") {
        let trimmed = rest.trim_start_matches(' ');
        ind += 2 + (rest.len() - trimmed.len());
        t = trimmed;
    }
    (ind, t)
}

fn key_of(content: &str) -> Option<(&str, &str)> {
    let (k, v) = content.split_once(':')?;
    if !(v.is_empty() || v.starts_with(' ')) {
        return None;
    }
    Some((k.trim().trim_matches('"').trim_matches('\''), v.trim()))
}

/// The 1-based line, within `doc`, of the field at `path`.
pub fn locate(doc: &str, path: &str) -> Option<usize> {
    let lines: Vec<Line<'_>> = doc
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let text = l.trim_start_matches(' ');
            (!text.is_empty() && !text.starts_with('#')).then(|| Line {
                no: i + 1,
                indent: l.len() - text.len(),
                text,
            })
        })
        .collect();
    let mut pos = 0usize;
    let mut parent: isize = -1; // indent of the current node's key or dash
    let mut after_idx = false;
    let mut found: Option<usize> = None;
    for seg in segments(path) {
        match seg {
            Seg::Key(key) => {
                let mut child_indent = None;
                let mut hit = None;
                for (i, l) in lines.iter().enumerate().skip(pos) {
                    let first = i == pos && after_idx;
                    if !first && (l.indent as isize) <= parent {
                        break;
                    }
                    let (ind, content) = strip_dashes(l.indent, l.text);
                    let ci = *child_indent.get_or_insert(ind);
                    if ind != ci {
                        continue;
                    }
                    if let Some((k, v)) = key_of(content)
                        && k == key
                    {
                        hit = Some((i, ind, v));
                        break;
                    }
                }
                let Some((i, ind, value)) = hit else {
                    return found;
                };
                found = Some(lines[i].no);
                if value.starts_with('{') || value.starts_with('[') {
                    return found;
                }
                pos = i + 1;
                parent = ind as isize;
                after_idx = false;
            }
            Seg::Idx(n) => {
                let mut count = 0;
                let mut dash_indent = None;
                let mut hit = None;
                for (i, l) in lines.iter().enumerate().skip(pos) {
                    let is_dash = l.text.starts_with("- ") || l.text == "-";
                    if (l.indent as isize) < parent || ((l.indent as isize) == parent && !is_dash) {
                        break;
                    }
                    if is_dash && dash_indent.is_none_or(|d| d == l.indent) {
                        dash_indent = Some(l.indent);
                        if count == n {
                            hit = Some(i);
                            break;
                        }
                        count += 1;
                    }
                }
                let Some(i) = hit else { return found };
                found = Some(lines[i].no);
                pos = i;
                parent = lines[i].indent as isize;
                after_idx = true;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 80
    - destination:
        host: reviews
      weight: 10
    timeout: 10
";

    #[test]
    fn finds_block_and_flow_fields() {
        assert_eq!(locate(DOC, "spec.http[1].route[1].weight"), Some(21));
        assert_eq!(
            locate(DOC, "spec.http[1].route[0].destination.subset"),
            Some(17)
        );
        assert_eq!(locate(DOC, "spec.http[1].route"), Some(14));
        assert_eq!(locate(DOC, "spec.http[1].timeout"), Some(22));
        assert_eq!(
            locate(DOC, "spec.http[0].match[0].headers.end-user.exact"),
            Some(11)
        );
        assert_eq!(
            locate(DOC, "spec.http[0].route[0].destination.subset"),
            Some(13),
            "flow mapping line"
        );
        assert_eq!(locate(DOC, "spec.hosts[0]"), Some(6));
        assert_eq!(locate(DOC, "metadata.name"), Some(4));
    }

    #[test]
    fn missing_fields_fall_back_to_the_deepest_parent() {
        assert_eq!(locate(DOC, "spec.http[1].retries"), Some(14));
        assert_eq!(locate(DOC, "spec.tcp[0]"), Some(5));
        assert_eq!(locate(DOC, "nothing"), None);
    }
}
