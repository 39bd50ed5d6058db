//! Comment-keeping edits of a clients file: toml_edit (the parser `toml` already compiles;
//! `display` adds only `toml_write`), so every comment, blank line and hand-written entry the
//! command does not touch is written back byte for byte. A removed entry takes the comment lines
//! directly above its `[[clients]]` header with it; comment text separated from the header by a
//! blank line (a file header, a note about the next entries) stays.

use toml_edit::{value, ArrayOfTables, Datetime, DocumentMut, Item, Table};

/// One `[[clients]]` table as written in the file.
pub(crate) struct Entry {
    pub index: usize,
    pub id: Option<String>,
    /// `key_sha256`, lowercased.
    pub digest: Option<String>,
}

/// What `keys add` writes for a new client.
pub(crate) struct NewClient<'a> {
    pub id: &'a str,
    pub digest: &'a str,
    pub expires: Option<Datetime>,
    pub rpm: Option<u32>,
    pub burst: Option<u32>,
    /// A comment line put above the entry (without `# `).
    pub note: &'a str,
}

pub(crate) struct Doc(DocumentMut);

impl Doc {
    /// Parse a clients file; its `clients` must be `[[clients]]` tables (or absent).
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let doc: DocumentMut = text
            .parse()
            .map_err(|e: toml_edit::TomlError| format!("not valid TOML: {}", e.message()))?;
        match doc.get("clients") {
            None | Some(Item::ArrayOfTables(_)) => Ok(Self(doc)),
            Some(_) => Err(
                "`clients` is not written as [[clients]] tables (nimgate keys edits only those)"
                    .into(),
            ),
        }
    }

    fn clients(&self) -> Option<&ArrayOfTables> {
        self.0.get("clients").and_then(Item::as_array_of_tables)
    }

    pub(crate) fn entries(&self) -> Vec<Entry> {
        let s = |t: &Table, k: &str| t.get(k).and_then(Item::as_str).map(str::to_string);
        self.clients()
            .into_iter()
            .flat_map(ArrayOfTables::iter)
            .enumerate()
            .map(|(index, t)| Entry {
                index,
                id: s(t, "id"),
                digest: s(t, "key_sha256").map(|d| d.to_ascii_lowercase()),
            })
            .collect()
    }

    /// Append a `[[clients]]` entry after everything in the file (comments at its end included:
    /// they stay where they were, above the new entry).
    pub(crate) fn add(&mut self, c: &NewClient<'_>) {
        let mut before = self.0.trailing().as_str().unwrap_or("").to_string();
        self.0.set_trailing("");
        let first = self.0.as_table().is_empty() && before.is_empty();
        if !before.is_empty() && !before.ends_with('\n') {
            before.push('\n');
        }
        let mut t = Table::new();
        t["id"] = value(c.id);
        t["key_sha256"] = value(c.digest);
        if let Some(e) = c.expires {
            t["expires"] = value(e);
        }
        if let Some(r) = c.rpm {
            t["rpm"] = value(i64::from(r));
        }
        if let Some(b) = c.burst {
            t["burst"] = value(i64::from(b));
        }
        let gap = if first { "" } else { "\n" };
        t.decor_mut()
            .set_prefix(format!("{before}{gap}# {}\n", c.note));
        let item = self
            .0
            .entry("clients")
            .or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()));
        if let Some(aot) = item.as_array_of_tables_mut() {
            aot.push(t);
        }
    }

    /// Remove the entries at `indices` (as `entries` numbers them).
    pub(crate) fn remove(&mut self, indices: &[usize]) {
        let mut indices = indices.to_vec();
        indices.sort_unstable();
        let mut moved_to_trailing = String::new();
        if let Some(aot) = self
            .0
            .get_mut("clients")
            .and_then(Item::as_array_of_tables_mut)
        {
            for &i in indices.iter().rev() {
                let prefix = aot
                    .get(i)
                    .and_then(|t| t.decor().prefix())
                    .and_then(|r| r.as_str())
                    .unwrap_or("")
                    .to_string();
                let keep = kept_part(&prefix);
                aot.remove(i);
                if keep.trim().is_empty() {
                    continue;
                }
                match aot.get_mut(i) {
                    Some(next) => {
                        let rest = next
                            .decor()
                            .prefix()
                            .and_then(|r| r.as_str())
                            .unwrap_or("\n")
                            .to_string();
                        next.decor_mut().set_prefix(format!("{keep}{rest}"));
                    }
                    None => moved_to_trailing = format!("{keep}{moved_to_trailing}"),
                }
            }
        }
        if !moved_to_trailing.is_empty() {
            let trailing = self.0.trailing().as_str().unwrap_or("").to_string();
            self.0
                .set_trailing(format!("{moved_to_trailing}{trailing}"));
        }
    }

    pub(crate) fn text(&self) -> String {
        self.0.to_string()
    }
}

/// Of the text before a `[[clients]]` header: what stays when the entry goes (everything up to
/// and including the last blank line).
fn kept_part(prefix: &str) -> &str {
    prefix.rfind("\n\n").map_or("", |i| &prefix[..=i])
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# Clients of the prod gateway.\n\n# team-a: the web app\n[[clients]]\nid = \"team-a\" # owner: alice\nkey_sha256 = \"aa\"\n\n# team-b: batch\n[[clients]]\nid = \"team-b\"\nkey_sha256 = \"BB\"\n# end of file\n";

    fn new<'a>(id: &'a str, digest: &'a str) -> NewClient<'a> {
        NewClient {
            id,
            digest,
            expires: Some("2027-03-01T00:00:00Z".parse().unwrap()),
            rpm: Some(60),
            burst: None,
            note: "added by test",
        }
    }

    #[test]
    fn adding_keeps_every_byte_of_what_was_there() {
        let mut d = Doc::parse(FILE).unwrap();
        d.add(&new("team-c", "cc"));
        let out = d.text();
        assert!(out.starts_with(FILE), "{out}");
        assert!(out.ends_with(
            "\n# added by test\n[[clients]]\nid = \"team-c\"\nkey_sha256 = \"cc\"\nexpires = 2027-03-01T00:00:00Z\nrpm = 60\n"
        ), "{out}");
        let ids: Vec<_> = Doc::parse(&out)
            .unwrap()
            .entries()
            .into_iter()
            .map(|e| e.id.unwrap())
            .collect();
        assert_eq!(ids, ["team-a", "team-b", "team-c"]);
        let mut empty = Doc::parse("").unwrap();
        empty.add(&new("x", "dd"));
        assert!(
            empty.text().starts_with("# added by test\n[[clients]]\n"),
            "{}",
            empty.text()
        );
    }

    #[test]
    fn removing_takes_the_entry_and_its_own_comment_only() {
        let mut d = Doc::parse(FILE).unwrap();
        d.remove(&[0]);
        let out = d.text();
        assert!(out.starts_with("# Clients of the prod gateway.\n"), "{out}");
        assert!(!out.contains("team-a") && !out.contains("alice"), "{out}");
        assert!(
            out.contains("# team-b: batch\n[[clients]]\nid = \"team-b\""),
            "{out}"
        );
        assert!(out.ends_with("# end of file\n"), "{out}");
        let mut d = Doc::parse(FILE).unwrap();
        d.remove(&[1, 0]);
        let out = d.text();
        assert!(out.contains("# Clients of the prod gateway."), "{out}");
        assert!(Doc::parse(&out).unwrap().entries().is_empty());
        assert_eq!(
            Doc::parse(FILE).unwrap().entries()[1].digest.as_deref(),
            Some("bb")
        );
    }

    #[test]
    fn an_inline_clients_array_is_refused() {
        assert!(Doc::parse("clients = [{ id = \"a\" }]\n").is_err());
        assert!(Doc::parse("[[clients]\n").is_err());
    }
}
