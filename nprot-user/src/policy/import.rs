//! Indicator imports (DESIGN §3): the Microsoft Defender indicator CSV and plain lists
//! (domains, IP addresses, CIDR blocks, hosts-file lines), besides the JSON file format
//! of [`load_file`].
//!
//! Both imports are all or nothing: the first bad row fails the whole import with an
//! error that names its line (1-based, the physical line on which the row starts) and,
//! for the CSV, its column:
//! `not a valid indicator file: line 4, column Action: unknown action "Blok" (…)`.
//! Within one import the same target (same type, canonical value and device groups)
//! given twice is kept once, with a warning naming both lines; given with different
//! actions, the action that would win the match is kept (Allowed > Warn > Block > Audit)
//! and the conflict is reported.

use std::{
    collections::HashMap,
    ffi::OsStr,
    fmt::Write as _,
    hash::{DefaultHasher, Hash, Hasher},
    net::IpAddr,
    path::Path,
    time::SystemTime,
};

use super::{
    Action, Indicator, IndicatorError, IndicatorRef, IndicatorType, Indicators, Loaded, Severity,
    Target,
    indicator::{clip, group_key},
    load_file,
};
use crate::time;

/// Warnings kept by one import; the rest are counted in a final line (as for JSON).
const MAX_WARNINGS: usize = 100;

/// An import error at `line` (and `column`, for the CSV).
fn line_error(line: usize, column: Option<&str>, reason: impl std::fmt::Display) -> IndicatorError {
    // `IndicatorError` has no variant for line-based formats; `Json` prints as
    // "not a valid indicator file: …", which is what this is.
    IndicatorError::Json(match column {
        Some(c) => format!("line {line}, column {c}: {reason}"),
        None => format!("line {line}: {reason}"),
    })
}

/// The reason inside an error from [`Indicator::new`] or [`Indicators::push`].
fn reason_of(e: IndicatorError) -> String {
    match e {
        IndicatorError::Invalid { reason, .. } => reason,
        other => other.to_string(),
    }
}

fn target_hash(target: &Target, groups: &[String]) -> u64 {
    // SipHash with fixed keys: deterministic, and only used within one import.
    let mut h = DefaultHasher::new();
    target.hash(&mut h);
    groups.hash(&mut h);
    h.finish()
}

/// Accumulates one import into a store, detecting duplicates as rows arrive so that
/// warnings come out in line order.
struct Import {
    set: Indicators,
    /// The line of each record in `set`.
    lines: Vec<u32>,
    /// Target hash → the record kept for it.
    by_target: HashMap<u64, u32>,
    /// Explicit ids → the record that has it.
    ids: HashMap<String, u32>,
    /// Records superseded by a later row whose action wins.
    dropped: Vec<u32>,
    warnings: Vec<String>,
    suppressed: usize,
    now: SystemTime,
}

impl Import {
    fn new() -> Import {
        Import {
            set: Indicators::new(),
            lines: Vec::new(),
            by_target: HashMap::new(),
            ids: HashMap::new(),
            dropped: Vec::new(),
            warnings: Vec::new(),
            suppressed: 0,
            now: SystemTime::now(),
        }
    }

    fn warn(&mut self, msg: impl FnOnce() -> String) {
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(msg());
        } else {
            self.suppressed += 1;
        }
    }

    /// Adds the indicator read from `line`. `ind.id` is kept only if `explicit_id`.
    fn add(
        &mut self,
        line: usize,
        mut ind: Indicator,
        explicit_id: bool,
    ) -> Result<(), IndicatorError> {
        let groups = group_key(&ind.device_groups);
        let key = target_hash(&ind.target, &groups);
        let existing = self.by_target.get(&key).and_then(|&prev| {
            let p = self.set.get(prev as usize)?;
            (p.target() == ind.target && group_key(p.device_groups()) == groups).then(|| {
                let explicit = (!p.id_is_derived()).then(|| p.id().to_string());
                (prev, p.action(), explicit, p.device_groups().join(", "))
            })
        });
        if let Some((prev, prev_action, prev_id, prev_groups)) = existing {
            let prev_line = self.lines[prev as usize];
            let mut what = ind.target.to_string();
            if !prev_groups.is_empty() {
                let _ = write!(what, " (device groups {prev_groups})");
            }
            if prev_action == ind.action {
                self.warn(|| {
                    format!(
                        "duplicate {what}: line {prev_line} and line {line} (both {prev_action}); line {prev_line} kept"
                    )
                });
                return Ok(());
            }
            let new_wins = ind.action.precedence() > prev_action.precedence();
            let winner = if new_wins { ind.action } else { prev_action };
            let action = ind.action;
            self.warn(|| {
                format!(
                    "conflicting actions for {what}: line {prev_line} {prev_action}, line {line} {action} (precedence decides: {winner})"
                )
            });
            if !new_wins {
                return Ok(());
            }
            if let Some(id) = prev_id
                && self.ids.get(&id) == Some(&prev)
            {
                self.ids.remove(&id);
            }
            self.dropped.push(prev);
        }

        let index = u32::try_from(self.set.len())
            .map_err(|_| line_error(line, None, "too many indicators"))?;
        if explicit_id {
            if let Some(&other) = self.ids.get(&ind.id) {
                return Err(line_error(
                    line,
                    Some("IndicatorId"),
                    format!(
                        "duplicate id {:?}: also the id on line {}",
                        clip(&ind.id),
                        self.lines[other as usize]
                    ),
                ));
            }
        } else {
            // An empty id makes the store derive it (and remember that it did).
            ind.id.clear();
        }
        // Notes on the rows kept only: a duplicate adds nothing to say.
        if let Some(note) = ind.target.note() {
            self.warn(|| format!("line {line} (value {:?}): {note}", clip(&ind.value)));
        }
        if let Some(exp) = ind.expiration.filter(|&e| e <= self.now) {
            self.warn(|| {
                format!(
                    "line {line} (value {:?}): already expired ({}); it will never match",
                    clip(&ind.value),
                    time::format(exp)
                )
            });
        }
        self.set
            .push(&ind)
            .map_err(|e| line_error(line, None, reason_of(e)))?;
        self.lines.push(u32::try_from(line).unwrap_or(u32::MAX));
        self.by_target.insert(key, index);
        if explicit_id {
            self.ids.insert(ind.id, index);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Loaded, IndicatorError> {
        self.dropped.sort_unstable();
        let dropped =
            |r: &IndicatorRef<'_>| self.dropped.binary_search(&(r.index() as u32)).is_ok();
        // Derived ids differ between the rows kept (they hash what makes rows distinct),
        // but an explicit id may be spelt like another row's derived one, and an export
        // of such a set could not be loaded again.
        if let Some((r, &other)) = self
            .set
            .iter()
            .filter(|r| r.id_is_derived() && !dropped(r))
            .find_map(|r| Some((r, self.ids.get(r.id())?)))
        {
            return Err(line_error(
                self.lines[other as usize] as usize,
                Some("IndicatorId"),
                format!(
                    "duplicate id {:?}: also the id derived for line {}",
                    clip(r.id()),
                    self.lines[r.index()]
                ),
            ));
        }
        let indicators = if self.dropped.is_empty() {
            self.set
        } else {
            // Rare (a conflict won by a later row): copy the set without the losers.
            let mut set = Indicators::new();
            for r in self.set.iter().filter(|r| !dropped(r)) {
                let mut ind = r.to_indicator();
                if r.id_is_derived() {
                    ind.id.clear();
                }
                set.push(&ind)
                    .map_err(|e| line_error(self.lines[r.index()] as usize, None, reason_of(e)))?;
            }
            set
        };
        if self.suppressed > 0 {
            self.warnings.push(format!(
                "… and {} more warnings like these",
                self.suppressed
            ));
        }
        Ok(Loaded {
            indicators,
            warnings: self.warnings,
        })
    }
}

// ---------------------------------------------------------------------------------------
// CSV (RFC 4180)

/// A strict RFC 4180 reader: comma-separated, fields optionally in double quotes (a
/// quote inside doubled), quoted fields may hold commas and line breaks; CRLF, LF or CR
/// line ends; a leading UTF-8 byte-order mark is skipped. Spaces around a quoted field
/// are allowed; a quote inside an unquoted field or text after a closing quote is an
/// error, since it usually means the columns are not what the writer meant.
struct CsvReader<'a> {
    text: &'a str,
    pos: usize,
    /// The current physical line, 1-based.
    line: usize,
}

impl<'a> CsvReader<'a> {
    fn new(text: &'a str) -> CsvReader<'a> {
        CsvReader {
            text: text.strip_prefix('\u{feff}').unwrap_or(text),
            pos: 0,
            line: 1,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// Consumes a line end if there is one.
    fn eat_line_end(&mut self) -> bool {
        match self.peek() {
            Some(b'\n') => self.pos += 1,
            Some(b'\r') => {
                self.pos += 1;
                if self.peek() == Some(b'\n') {
                    self.pos += 1;
                }
            }
            _ => return false,
        }
        self.line += 1;
        true
    }

    /// Reads the next record into `fields` and returns the line it starts on; `None` at
    /// the end of the text. Errors carry the line they are on.
    fn next_record(&mut self, fields: &mut Vec<String>) -> Result<Option<usize>, (usize, String)> {
        fields.clear();
        if self.pos >= self.text.len() {
            return Ok(None);
        }
        let start_line = self.line;
        let bytes = self.text.as_bytes();
        loop {
            self.skip_blanks();
            let field = if self.peek() == Some(b'"') {
                let open_line = self.line;
                self.pos += 1;
                let mut value = String::new();
                let mut seg = self.pos;
                loop {
                    match bytes.get(self.pos) {
                        None => {
                            return Err((
                                open_line,
                                "a quoted field is never closed (missing '\"')".into(),
                            ));
                        }
                        Some(b'"') if bytes.get(self.pos + 1) == Some(&b'"') => {
                            value.push_str(&self.text[seg..=self.pos]);
                            self.pos += 2;
                            seg = self.pos;
                        }
                        Some(b'"') => {
                            value.push_str(&self.text[seg..self.pos]);
                            self.pos += 1;
                            break;
                        }
                        Some(b'\n') => {
                            self.line += 1;
                            self.pos += 1;
                        }
                        Some(b'\r') => {
                            if bytes.get(self.pos + 1) != Some(&b'\n') {
                                self.line += 1;
                            }
                            self.pos += 1;
                        }
                        Some(_) => self.pos += 1,
                    }
                }
                self.skip_blanks();
                if !matches!(self.peek(), None | Some(b',' | b'\r' | b'\n')) {
                    return Err((
                        self.line,
                        "text after the closing quote of a field (a quote inside a quoted field is written \"\")".into(),
                    ));
                }
                value
            } else {
                let start = self.pos;
                while let Some(b) = self.peek() {
                    match b {
                        b',' | b'\r' | b'\n' => break,
                        b'"' => {
                            return Err((
                                self.line,
                                "a quote inside an unquoted field (enclose the field in double quotes and write a quote inside as \"\")".into(),
                            ));
                        }
                        _ => self.pos += 1,
                    }
                }
                self.text[start..self.pos].to_string()
            };
            fields.push(field);
            if self.peek() == Some(b',') {
                self.pos += 1;
                continue;
            }
            self.eat_line_end();
            return Ok(Some(start_line));
        }
    }
}

/// The columns of a Defender indicator CSV, plus nprot's optional `IndicatorId`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Col {
    IndicatorType,
    IndicatorValue,
    ExpirationTime,
    Action,
    Severity,
    Title,
    Description,
    RecommendedActions,
    RbacGroups,
    Category,
    MitreTechniques,
    GenerateAlert,
    IndicatorId,
}

impl Col {
    const ALL: [Col; 13] = [
        Col::IndicatorType,
        Col::IndicatorValue,
        Col::ExpirationTime,
        Col::Action,
        Col::Severity,
        Col::Title,
        Col::Description,
        Col::RecommendedActions,
        Col::RbacGroups,
        Col::Category,
        Col::MitreTechniques,
        Col::GenerateAlert,
        Col::IndicatorId,
    ];
    const REQUIRED: [Col; 3] = [Col::IndicatorType, Col::IndicatorValue, Col::Action];

    fn name(self) -> &'static str {
        match self {
            Col::IndicatorType => "IndicatorType",
            Col::IndicatorValue => "IndicatorValue",
            Col::ExpirationTime => "ExpirationTime",
            Col::Action => "Action",
            Col::Severity => "Severity",
            Col::Title => "Title",
            Col::Description => "Description",
            Col::RecommendedActions => "RecommendedActions",
            Col::RbacGroups => "RbacGroups",
            Col::Category => "Category",
            Col::MitreTechniques => "MitreTechniques",
            Col::GenerateAlert => "GenerateAlert",
            Col::IndicatorId => "IndicatorId",
        }
    }

    fn from_header(name: &str) -> Option<Col> {
        Col::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name))
    }
}

/// The Defender CSV header, for messages.
const DEFENDER_HEADER: &str = "IndicatorType,IndicatorValue,ExpirationTime,Action,Severity,Title,Description,RecommendedActions,RbacGroups,Category,MitreTechniques,GenerateAlert";

/// Defender indicator types that are not about the network.
const NON_NETWORK_TYPES: [&str; 4] = ["FileSha1", "FileSha256", "FileMd5", "CertificateThumbprint"];

/// Defender's action names: nprot's four, and the spellings Defender also uses. The bool
/// is whether the action asks for an alert (used when GenerateAlert is empty).
const ACTIONS: [(&str, Action, bool); 7] = [
    ("Allowed", Action::Allowed, false),
    ("Audit", Action::Audit, false),
    ("Warn", Action::Warn, false),
    ("Block", Action::Block, false),
    ("Alert", Action::Audit, true),
    ("AlertAndBlock", Action::Block, true),
    ("BlockAndRemediate", Action::Block, false),
];

const ACTIONS_EXPECTED: &str =
    "expected Allowed, Audit, Warn, Block, Alert, AlertAndBlock or BlockAndRemediate";

/// Where each column is in a row.
struct Header {
    /// Column index of each `Col` (by `Col as usize`).
    index: [Option<usize>; Col::ALL.len()],
    /// Header fields with an empty name: their values must be empty.
    unnamed: Vec<usize>,
    len: usize,
}

impl Header {
    fn parse(line: usize, fields: &[String]) -> Result<Header, IndicatorError> {
        let mut index = [None; Col::ALL.len()];
        let mut unnamed = Vec::new();
        for (i, raw) in fields.iter().enumerate() {
            let name = raw.trim();
            if name.is_empty() {
                unnamed.push(i);
                continue;
            }
            let Some(col) = Col::from_header(name) else {
                let mut reason = format!(
                    "unknown column {:?} in the header (expected {DEFENDER_HEADER}, and optionally IndicatorId)",
                    clip(name)
                );
                if fields.len() == 1 && name.contains(';') {
                    reason.push_str(
                        "; the fields seem to be separated by ';': the Defender CSV uses ','",
                    );
                }
                return Err(line_error(line, None, reason));
            };
            if index[col as usize].replace(i).is_some() {
                return Err(line_error(
                    line,
                    None,
                    format!("column {} appears twice in the header", col.name()),
                ));
            }
        }
        for col in Col::REQUIRED {
            if index[col as usize].is_none() {
                let mut reason = format!("the header has no {} column", col.name());
                if fields.len() == 1 && fields[0].contains(';') {
                    reason.push_str(
                        "; the fields seem to be separated by ';': the Defender CSV uses ','",
                    );
                }
                return Err(line_error(line, None, reason));
            }
        }
        Ok(Header {
            index,
            unnamed,
            len: fields.len(),
        })
    }
}

/// One CSV row, with its line, for reading columns.
struct Row<'r> {
    line: usize,
    header: &'r Header,
    fields: &'r [String],
}

impl Row<'_> {
    /// The trimmed field of `col`; empty if the column or the field is absent.
    fn get(&self, col: Col) -> &str {
        self.header.index[col as usize]
            .and_then(|i| self.fields.get(i))
            .map_or("", |f| f.trim())
    }

    fn error(&self, col: Col, reason: impl std::fmt::Display) -> IndicatorError {
        line_error(self.line, Some(col.name()), reason)
    }

    fn opt(&self, col: Col) -> Option<String> {
        let v = self.get(col);
        (!v.is_empty()).then(|| v.to_string())
    }
}

/// What one CSV row turned into.
enum RowResult {
    Indicator(Box<Indicator>, bool),
    /// A file or certificate indicator: skipped, with this type name.
    Skipped(&'static str),
}

fn parse_row(row: &Row<'_>) -> Result<RowResult, IndicatorError> {
    let type_name = row.get(Col::IndicatorType);
    let Some(&kind) = IndicatorType::ALL
        .iter()
        .find(|t| t.as_str().eq_ignore_ascii_case(type_name))
    else {
        if let Some(t) = NON_NETWORK_TYPES
            .into_iter()
            .find(|t| t.eq_ignore_ascii_case(type_name))
        {
            return Ok(RowResult::Skipped(t));
        }
        let reason = if type_name.is_empty() {
            "empty (expected IpAddress, DomainName or Url)".to_string()
        } else {
            format!(
                "unknown indicator type {:?} (expected IpAddress, DomainName or Url)",
                clip(type_name)
            )
        };
        return Err(row.error(Col::IndicatorType, reason));
    };

    let action_name = row.get(Col::Action);
    let Some(&(_, action, alerts)) = ACTIONS
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(action_name))
    else {
        let reason = if action_name.is_empty() {
            format!("empty ({ACTIONS_EXPECTED})")
        } else {
            format!(
                "unknown action {:?} ({ACTIONS_EXPECTED})",
                clip(action_name)
            )
        };
        return Err(row.error(Col::Action, reason));
    };

    let value = row.get(Col::IndicatorValue);
    if value.is_empty() {
        return Err(row.error(Col::IndicatorValue, "empty"));
    }
    let mut ind = Indicator::new(kind, value, action).map_err(|e| {
        row.error(
            Col::IndicatorValue,
            format!("invalid value {:?}: {}", clip(value), reason_of(e)),
        )
    })?;

    let exp = row.get(Col::ExpirationTime);
    if !exp.is_empty() {
        let t = time::parse_system_time(exp).map_err(|e| {
            row.error(
                Col::ExpirationTime,
                format!(
                    "bad expiration {:?}: {e} (expected e.g. 2027-01-01T00:00:00Z, or empty for none)",
                    clip(exp)
                ),
            )
        })?;
        ind.expiration = Some(t);
    }

    let sev = row.get(Col::Severity);
    if !sev.is_empty() {
        ind.severity = Some(
            Severity::ALL
                .iter()
                .copied()
                .find(|s| s.as_str().eq_ignore_ascii_case(sev))
                .ok_or_else(|| {
                    row.error(
                        Col::Severity,
                        format!(
                            "unknown severity {:?} (expected Informational, Low, Medium, High or empty)",
                            clip(sev)
                        ),
                    )
                })?,
        );
    }

    ind.title = row.opt(Col::Title);
    ind.description = row.opt(Col::Description);
    ind.device_groups = row
        .get(Col::RbacGroups)
        .split([',', ';'])
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_string)
        .collect();

    let alert = row.get(Col::GenerateAlert);
    ind.generate_alert = if alert.is_empty() {
        alerts
    } else if alert.eq_ignore_ascii_case("true") {
        true
    } else if alert.eq_ignore_ascii_case("false") {
        false
    } else {
        return Err(row.error(
            Col::GenerateAlert,
            format!("expected TRUE, FALSE or empty, not {:?}", clip(alert)),
        ));
    };

    let explicit_id = match row.opt(Col::IndicatorId) {
        Some(id) => {
            ind.id = id;
            true
        }
        None => false,
    };
    Ok(RowResult::Indicator(Box::new(ind), explicit_id))
}

/// Loads a Microsoft Defender indicator CSV, all or nothing.
///
/// The first non-blank line is the header; column names are matched case-insensitively
/// and may come in any order. `IndicatorType`, `IndicatorValue` and `Action` are
/// required; `ExpirationTime`, `Severity`, `Title`, `Description`, `RbacGroups` (device
/// groups, separated by `,` or `;`), `GenerateAlert` and nprot's `IndicatorId` are used;
/// `RecommendedActions`, `Category` and `MitreTechniques` are accepted and ignored. Any
/// other column name is an error. Type, action, severity and TRUE/FALSE values are
/// case-insensitive. Defender's `Alert`, `AlertAndBlock` and `BlockAndRemediate` actions
/// are read as Audit, Block and Block (`Alert` and `AlertAndBlock` also set
/// GenerateAlert when that column is empty). File and certificate indicators
/// (`FileSha1`, `FileSha256`, `FileMd5`, `CertificateThumbprint`) are skipped with a
/// warning, so that a mixed Defender export imports; any other unknown type is an
/// error. Blank lines and rows whose fields are all empty are skipped; a row with fewer
/// fields than the header has its missing fields empty, one with more is an error.
pub fn load_defender_csv(text: &str) -> Result<Loaded, IndicatorError> {
    let mut reader = CsvReader::new(text);
    let csv_err = |(line, reason): (usize, String)| line_error(line, None, reason);
    let mut fields = Vec::new();
    let header = loop {
        match reader.next_record(&mut fields).map_err(csv_err)? {
            None => {
                return Err(line_error(
                    reader.line,
                    None,
                    format!("no header line (expected {DEFENDER_HEADER})"),
                ));
            }
            Some(_) if fields.iter().all(|f| f.trim().is_empty()) => {}
            Some(line) => break Header::parse(line, &fields)?,
        }
    };

    let mut import = Import::new();
    while let Some(line) = reader.next_record(&mut fields).map_err(csv_err)? {
        if fields.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        if fields.len() > header.len {
            return Err(line_error(
                line,
                None,
                format!(
                    "{} fields, but the header has {} columns (is a comma inside a field not enclosed in double quotes?)",
                    fields.len(),
                    header.len
                ),
            ));
        }
        if let Some(&i) = header
            .unnamed
            .iter()
            .find(|&&i| fields.get(i).is_some_and(|f| !f.trim().is_empty()))
        {
            return Err(line_error(
                line,
                None,
                format!("a value in field {}, whose header is empty", i + 1),
            ));
        }
        let row = Row {
            line,
            header: &header,
            fields: &fields,
        };
        match parse_row(&row)? {
            RowResult::Indicator(ind, explicit_id) => import.add(line, *ind, explicit_id)?,
            RowResult::Skipped(kind) => import.warn(|| {
                format!(
                    "line {line}: {kind} indicator skipped: file and certificate indicators are not network indicators"
                )
            }),
        }
    }
    import.finish()
}

// ---------------------------------------------------------------------------------------
// Plain lists

/// Names in hosts files that stand for this machine or the local network, not for
/// anything to block; skipped wherever they appear in a hosts-file line.
const LOCAL_HOST_NAMES: [&str; 13] = [
    "localhost",
    "localhost.localdomain",
    "local",
    "broadcasthost",
    "ip6-localhost",
    "ip6-loopback",
    "ip6-localnet",
    "ip6-mcastprefix",
    "ip6-allnodes",
    "ip6-allrouters",
    "ip6-allhosts",
    "0.0.0.0",
    "::",
];

/// The type of a single-entry line: a URL if it has a scheme, an IP address or CIDR
/// block if it looks like one (so that `10.0.0` is reported as a bad address rather
/// than taken as a domain), else a domain name.
fn classify(entry: &str) -> IndicatorType {
    let addr = entry.split_once('/').map_or(entry, |(a, _)| a);
    if entry.contains("://") {
        IndicatorType::Url
    } else if addr.parse::<IpAddr>().is_ok()
        || addr.contains(':')
        || entry
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'/')
    {
        IndicatorType::IpAddress
    } else {
        IndicatorType::DomainName
    }
}

/// Loads a plain list, all or nothing, giving every entry `action`.
///
/// One entry per line: a domain name (`example.com`, `*.example.com`), an IPv4 or IPv6
/// address, a CIDR block, or an `http(s)://` URL; or a hosts-file line, an address
/// followed by one or more host names (`0.0.0.0 ads.example tracker.example`), where the
/// address is ignored and each name becomes a DomainName indicator, except the names of
/// the local machine and network (`localhost`, `localhost.localdomain`, `broadcasthost`,
/// `ip6-localhost`, `ip6-loopback`, …) which are skipped. `#` starts a comment, to the
/// end of the line; blank lines are ignored.
pub fn load_list(text: &str, action: Action) -> Result<Loaded, IndicatorError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut import = Import::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let content = raw.split_once('#').map_or(raw, |(c, _)| c);
        let mut tokens = content.split_ascii_whitespace();
        let Some(first) = tokens.next() else {
            continue;
        };
        let Some(second) = tokens.next() else {
            let kind = classify(first);
            let ind = Indicator::new(kind, first, action).map_err(|e| {
                line_error(line, None, format!("{:?}: {}", clip(first), reason_of(e)))
            })?;
            import.add(line, ind, false)?;
            continue;
        };
        // A hosts-file line. The address is only checked, so that a line like
        // "example.com other.example" is not silently read as a hosts-file line.
        let addr = first.split_once('%').map_or(first, |(a, _)| a);
        if addr.parse::<IpAddr>().is_err() {
            return Err(line_error(
                line,
                None,
                format!(
                    "expected one entry (a domain name, an IP address, a CIDR block or a URL) or a hosts-file line (an address, then host names), not {:?}",
                    clip(content.trim())
                ),
            ));
        }
        for name in std::iter::once(second).chain(tokens) {
            if LOCAL_HOST_NAMES
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name))
            {
                continue;
            }
            let ind = Indicator::new(IndicatorType::DomainName, name, action).map_err(|e| {
                line_error(
                    line,
                    None,
                    format!("host name {:?}: {}", clip(name), reason_of(e)),
                )
            })?;
            import.add(line, ind, false)?;
        }
    }
    import.finish()
}

// ---------------------------------------------------------------------------------------
// Files

/// Reads `path` as UTF-8 text; errors other than opening it are reported by line.
fn read_text(path: &Path) -> Result<String, IndicatorError> {
    let bytes = std::fs::read(path).map_err(|error| IndicatorError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let reason = if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
            "the file is UTF-16 text: save it as UTF-8".to_string()
        } else {
            let at = e.utf8_error().valid_up_to();
            let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            return line_error(line, None, "not UTF-8 text (save the file as UTF-8)");
        };
        line_error(1, None, reason)
    })
}

/// Loads an indicator file of any supported format, chosen by its extension
/// (case-insensitive): `.json` is the JSON file format ([`load_file`]), `.csv` the
/// Defender CSV ([`load_defender_csv`]), anything else (`.txt`, `.list`, `hosts`, …) a
/// plain list ([`load_list`]) whose entries all get `list_action`. Errors name the file.
pub fn load_any(path: &Path, list_action: Action) -> Result<Loaded, IndicatorError> {
    let ext = path
        .extension()
        .and_then(OsStr::to_str)
        .map(str::to_ascii_lowercase);
    if ext.as_deref() == Some("json") {
        return load_file(path);
    }
    let text = read_text(path);
    let loaded = match ext.as_deref() {
        Some("csv") => text.and_then(|t| load_defender_csv(&t)),
        _ => text.and_then(|t| load_list(&t, list_action)),
    };
    loaded.map_err(|e| match e {
        e @ IndicatorError::Io { .. } => e,
        e => IndicatorError::File {
            path: path.to_path_buf(),
            error: Box::new(e),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::load_json;

    const HEADER: &str = "IndicatorType,IndicatorValue,ExpirationTime,Action,Severity,Title,Description,RecommendedActions,RbacGroups,Category,MitreTechniques,GenerateAlert";

    fn csv(rows: &[&str]) -> String {
        let mut s = format!("{HEADER}\r\n");
        for r in rows {
            s.push_str(r);
            s.push_str("\r\n");
        }
        s
    }

    fn csv_err(text: &str) -> String {
        match load_defender_csv(text) {
            Ok(l) => panic!("loaded {} indicators from {text:?}", l.indicators.len()),
            Err(e) => e.to_string(),
        }
    }

    fn list_err(text: &str) -> String {
        match load_list(text, Action::Block) {
            Ok(l) => panic!("loaded {} indicators from {text:?}", l.indicators.len()),
            Err(e) => e.to_string(),
        }
    }

    fn all(l: &Loaded) -> Vec<Indicator> {
        l.indicators.iter().map(|r| r.to_indicator()).collect()
    }

    #[test]
    fn csv_with_every_column() {
        let text = format!(
            "\u{feff}{HEADER}\r\n\
             DomainName,Bad.Example.COM,2099-01-01T00:00:00.0000000Z,Block,High,\"Bad, very bad\",\"Line one\r\nline \"\"two\"\"\",Reimage,\"grp1, grp2;grp3\",Malware,T1566,TRUE\r\n\
             IpAddress,198.18.0.0/15,,Audit,informational,Bench net,,,,,,false\r\n\
             Url,http://shop.example/checkout,,allowed,,,,,,,,\r\n\
             IpAddress, 2001:db8::1 ,,AlertAndBlock,,,,,,,,\r\n"
        );
        let l = load_defender_csv(&text).unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let v = all(&l);
        assert_eq!(v.len(), 4);

        let d = &v[0];
        assert_eq!(d.kind, IndicatorType::DomainName);
        assert_eq!(d.value, "Bad.Example.COM");
        assert_eq!(d.target, Target::Domain("bad.example.com".into()));
        assert_eq!(d.action, Action::Block);
        assert_eq!(
            d.expiration,
            Some(time::parse_system_time("2099-01-01T00:00:00Z").unwrap())
        );
        assert_eq!(d.severity, Some(Severity::High));
        assert_eq!(d.title.as_deref(), Some("Bad, very bad"));
        assert_eq!(d.description.as_deref(), Some("Line one\r\nline \"two\""));
        assert_eq!(d.device_groups, ["grp1", "grp2", "grp3"]);
        assert!(d.generate_alert);
        assert_eq!(
            d.id,
            super::super::derived_id(&d.target, d.action, &d.device_groups, None)
        );
        assert!(l.indicators.get(0).unwrap().id_is_derived());

        let ip = &v[1];
        assert_eq!(ip.target, Target::Ip("198.18.0.0/15".parse().unwrap()));
        assert_eq!(ip.action, Action::Audit);
        assert_eq!(ip.severity, Some(Severity::Informational));
        assert_eq!(ip.title.as_deref(), Some("Bench net"));
        assert_eq!(ip.description, None);
        assert!(ip.device_groups.is_empty());
        assert!(!ip.generate_alert);
        assert_eq!(ip.expiration, None);

        assert_eq!(v[2].kind, IndicatorType::Url);
        assert_eq!(v[2].action, Action::Allowed);
        // AlertAndBlock is Block with an alert.
        assert_eq!(v[3].value, "2001:db8::1");
        assert_eq!(v[3].action, Action::Block);
        assert!(v[3].generate_alert);
    }

    #[test]
    fn csv_header_order_case_and_optional_columns() {
        let text = "action,indicatorvalue,INDICATORTYPE,IndicatorId\n\
                    Warn,example.org,domainname,feed-17\n\
                    Alert,example.net,DomainName,\n\
                    BlockAndRemediate,example.com,DomainName,\n";
        let v = all(&load_defender_csv(text).unwrap());
        assert_eq!(v.len(), 3);
        assert_eq!((v[0].id.as_str(), v[0].action), ("feed-17", Action::Warn));
        assert_eq!((v[1].action, v[1].generate_alert), (Action::Audit, true));
        assert_eq!((v[2].action, v[2].generate_alert), (Action::Block, false));
        // Explicit GenerateAlert wins over what the action implies.
        let v = all(&load_defender_csv(
            "IndicatorType,IndicatorValue,Action,GenerateAlert\nDomainName,a.example,Alert,FALSE\n",
        )
        .unwrap());
        assert!(!v[0].generate_alert);
    }

    #[test]
    fn csv_short_rows_blank_lines_and_header_only() {
        let text =
            "\n\nIndicatorType,IndicatorValue,Action,Title\n\nDomainName,a.example,Block\n,,,\n";
        let l = load_defender_csv(text).unwrap();
        assert_eq!(l.indicators.len(), 1);
        assert_eq!(l.indicators.get(0).unwrap().title(), None);
        let l = load_defender_csv(&csv(&[])).unwrap();
        assert!(l.indicators.is_empty());
        // The error names the line of the row even after blank lines and a multi-line field.
        let e = csv_err(&csv(&[
            "DomainName,a.example,,Block,,\"t\n\nt\",,,,,,",
            "",
            "DomainName,b.example,,Blok,,,,,,,,",
        ]));
        assert!(
            e.starts_with(
                "not a valid indicator file: line 6, column Action: unknown action \"Blok\""
            ),
            "{e}"
        );
    }

    #[test]
    fn csv_bad_row_names_line_and_column() {
        let e = csv_err(&csv(&[
            "DomainName,good.example,,Block,,,,,,,,",
            "IpAddress,10.1.2.3/8,,Block,,,,,,,,",
        ]));
        assert_eq!(
            e,
            "not a valid indicator file: line 3, column IndicatorValue: invalid value \"10.1.2.3/8\": host bits set in CIDR block 10.1.2.3/8 (did you mean 10.0.0.0/8?)"
        );
        let e = csv_err(&csv(&["DomainName,exa mple.com,,Block,,,,,,,,"]));
        assert_eq!(
            e,
            "not a valid indicator file: line 2, column IndicatorValue: invalid value \"exa mple.com\": not a valid domain name: invalid character ' '"
        );
        let e = csv_err(&csv(&["DomainName,,,Block,,,,,,,,"]));
        assert_eq!(
            e,
            "not a valid indicator file: line 2, column IndicatorValue: empty"
        );
        let e = csv_err(&csv(&["DomainName,a.example,,Block,Critical,,,,,,,"]));
        assert!(
            e.starts_with(
                "not a valid indicator file: line 2, column Severity: unknown severity \"Critical\""
            ),
            "{e}"
        );
        let e = csv_err(&csv(&["DomainName,a.example,,Block,,,,,,,,yes"]));
        assert_eq!(
            e,
            "not a valid indicator file: line 2, column GenerateAlert: expected TRUE, FALSE or empty, not \"yes\""
        );
        let e = csv_err(&csv(&[
            "DomainName,a.example,,Block,,a,b,c,d,e,f,TRUE,extra",
        ]));
        assert!(
            e.starts_with(
                "not a valid indicator file: line 2: 13 fields, but the header has 12 columns"
            ),
            "{e}"
        );
    }

    #[test]
    fn csv_unknown_action() {
        let e = csv_err(&csv(&[
            "DomainName,ok.example,,Block,,,,,,,,",
            "",
            "DomainName,bad.example,,Blok,,,,,,,,",
        ]));
        assert_eq!(
            e,
            "not a valid indicator file: line 4, column Action: unknown action \"Blok\" (expected Allowed, Audit, Warn, Block, Alert, AlertAndBlock or BlockAndRemediate)"
        );
        let e = csv_err(&csv(&["DomainName,a.example,,,,,,,,,,"]));
        assert!(
            e.starts_with("not a valid indicator file: line 2, column Action: empty ("),
            "{e}"
        );
    }

    #[test]
    fn csv_bad_expiration() {
        for (exp, why) in [
            ("2027-02-30T00:00:00Z", "day out of range"),
            ("12/31/2027 10:00", ""),
            ("2027-01-01", ""),
        ] {
            let e = csv_err(&csv(&[
                "DomainName,ok.example,,Block,,,,,,,,",
                &format!("DomainName,a.example,{exp},Block,,,,,,,,"),
            ]));
            let start = format!(
                "not a valid indicator file: line 3, column ExpirationTime: bad expiration {exp:?}: not an RFC 3339 timestamp: {why}"
            );
            assert!(e.starts_with(&start), "{e}");
            assert!(
                e.ends_with("(expected e.g. 2027-01-01T00:00:00Z, or empty for none)"),
                "{e}"
            );
        }
        // Expired but valid: kept with a warning, as for JSON.
        let l = load_defender_csv(&csv(&[
            "DomainName,old.example,2001-01-01T00:00:00Z,Block,,,,,,,,",
        ]))
        .unwrap();
        assert_eq!(l.indicators.len(), 1);
        assert_eq!(
            l.warnings,
            [
                "line 2 (value \"old.example\"): already expired (2001-01-01T00:00:00Z); it will never match"
            ]
        );
    }

    #[test]
    fn csv_unknown_type_and_skipped_file_hashes() {
        let e = csv_err(&csv(&["Domain,a.example,,Block,,,,,,,,"]));
        assert_eq!(
            e,
            "not a valid indicator file: line 2, column IndicatorType: unknown indicator type \"Domain\" (expected IpAddress, DomainName or Url)"
        );
        let l = load_defender_csv(&csv(&[
            "FileSha256,275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f,,BlockAndRemediate,,,,,,,,",
            "DomainName,a.example,,Block,,,,,,,,",
            "CertificateThumbprint,1234,,Allowed,,,,,,,,",
        ]))
        .unwrap();
        assert_eq!(l.indicators.len(), 1);
        assert_eq!(
            l.warnings,
            [
                "line 2: FileSha256 indicator skipped: file and certificate indicators are not network indicators",
                "line 4: CertificateThumbprint indicator skipped: file and certificate indicators are not network indicators",
            ]
        );
    }

    #[test]
    fn csv_syntax_errors() {
        let e = csv_err("IndicatorType,IndicatorValue,Action\nDomainName,\"a.example,Block\n");
        assert_eq!(
            e,
            "not a valid indicator file: line 2: a quoted field is never closed (missing '\"')"
        );
        let e = csv_err("IndicatorType,IndicatorValue,Action\nDomainName,a\"b.example,Block\n");
        assert!(
            e.starts_with("not a valid indicator file: line 2: a quote inside an unquoted field"),
            "{e}"
        );
        let e = csv_err("IndicatorType,IndicatorValue,Action\nDomainName,\"a.example\"x,Block\n");
        assert!(
            e.starts_with("not a valid indicator file: line 2: text after the closing quote"),
            "{e}"
        );
        let e = csv_err("IndicatorType,Value,Action\n");
        assert!(
            e.starts_with(
                "not a valid indicator file: line 1: unknown column \"Value\" in the header"
            ),
            "{e}"
        );
        let e = csv_err("IndicatorType,IndicatorValue\n");
        assert_eq!(
            e,
            "not a valid indicator file: line 1: the header has no Action column"
        );
        let e = csv_err("IndicatorType;IndicatorValue;Action\n");
        assert!(e.contains("separated by ';'"), "{e}");
        let e = csv_err("Action,IndicatorType,IndicatorValue,action\n");
        assert_eq!(
            e,
            "not a valid indicator file: line 1: column Action appears twice in the header"
        );
        let e = csv_err("\u{feff}\r\n");
        assert!(
            e.starts_with("not a valid indicator file: line 2: no header line"),
            "{e}"
        );
        let e = csv_err("IndicatorType,IndicatorValue,Action,\nDomainName,a.example,Block,x\n");
        assert_eq!(
            e,
            "not a valid indicator file: line 2: a value in field 4, whose header is empty"
        );
        // Spaces around quoted fields and a trailing empty header column are fine.
        let l = load_defender_csv(
            "IndicatorType,IndicatorValue,Action,\nDomainName , \"a.example\" ,Block,\n",
        )
        .unwrap();
        assert_eq!(l.indicators.get(0).unwrap().value(), "a.example");
    }

    #[test]
    fn csv_duplicate_explicit_ids() {
        let e = csv_err(
            "IndicatorType,IndicatorValue,Action,IndicatorId\nDomainName,a.example,Block,x\nDomainName,b.example,Block,x\n",
        );
        assert_eq!(
            e,
            "not a valid indicator file: line 3, column IndicatorId: duplicate id \"x\": also the id on line 2"
        );
    }

    #[test]
    fn csv_explicit_id_spelt_like_a_derived_one() {
        let derived = load_defender_csv(&csv(&["DomainName,a.example,,Block,,,,,,,,"])).unwrap();
        let derived = derived.indicators.get(0).unwrap().id().to_owned();
        let e = csv_err(&format!(
            "IndicatorType,IndicatorValue,Action,IndicatorId\n\
             DomainName,a.example,Block,\n\
             DomainName,b.example,Block,{derived}\n"
        ));
        assert_eq!(
            e,
            format!(
                "not a valid indicator file: line 3, column IndicatorId: duplicate id \"{derived}\": also the id derived for line 2"
            )
        );
    }

    /// Issue 11: the same value in two device groups, without ids, is two indicators
    /// with two ids, and the export of the set loads back as itself.
    #[test]
    fn csv_same_value_in_two_groups_round_trips_through_export() {
        let l = load_defender_csv(&csv(&[
            "DomainName,bad.example,,Block,,For group A,,,GroupA,,,",
            "DomainName,bad.example,,Block,,For group B,,,GroupB,,,",
            "DomainName,bad.example,2099-01-01T00:00:00Z,Audit,High,Everywhere,,,,,,TRUE",
            "Url,http://bad.example/x,,Warn,,Both,,,\"GroupA;GroupB\",,,",
        ]))
        .unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let ids: Vec<&str> = l.indicators.iter().map(|r| r.id()).collect();
        assert_eq!(ids.len(), 4);
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 4, "{ids:?}");

        let export = serde_json::to_string_pretty(&l.indicators).unwrap();
        let back = load_json(&export).unwrap();
        assert!(back.warnings.is_empty(), "{:?}", back.warnings);
        assert_eq!(all(&back), all(&l));
        assert_eq!(
            serde_json::to_string_pretty(&back.indicators).unwrap(),
            export
        );
        // The ids are kept as given from then on.
        assert!(back.indicators.iter().all(|r| !r.id_is_derived()));
    }

    #[test]
    fn csv_duplicates_and_conflicts() {
        let l = load_defender_csv(&csv(&[
            "DomainName,example.com,,Block,,first,,,,,,",
            "DomainName,*.Example.COM.,,Block,,second,,,,,,",
            "DomainName,example.com,,Allowed,,third,,,,,,",
            "DomainName,example.com,,Block,,fourth,,,,,,",
            "DomainName,example.com,,Block,,scoped,,,g1,,,",
            "DomainName,other.example,,Audit,,,,,,,,",
        ]))
        .unwrap();
        assert_eq!(
            l.warnings,
            [
                "duplicate example.com: line 2 and line 3 (both Block); line 2 kept",
                "conflicting actions for example.com: line 2 Block, line 4 Allowed (precedence decides: Allowed)",
                "conflicting actions for example.com: line 4 Allowed, line 5 Block (precedence decides: Allowed)",
            ]
        );
        let v = all(&l);
        let titles: Vec<_> = v.iter().map(|i| i.title.as_deref().unwrap_or("")).collect();
        // The scoped row is another indicator; the Allowed row replaced the first Block.
        assert_eq!(titles, ["third", "scoped", ""]);
        assert!(l.indicators.iter().all(|r| r.id_is_derived()));
    }

    #[test]
    fn hosts_file() {
        let text = "# StevenBlack-style hosts\n\
                    127.0.0.1 localhost\n\
                    127.0.0.1 localhost.localdomain\n\
                    255.255.255.255 broadcasthost\n\
                    ::1 localhost ip6-localhost ip6-loopback\n\
                    fe80::1%lo0 localhost\n\
                    0.0.0.0 0.0.0.0\n\
                    \n\
                    0.0.0.0 ads.example tracker.example # two at once\n\
                    127.0.0.1\tx.example\n\
                    ::1 y.example\n";
        let l = load_list(text, Action::Block).unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let v = all(&l);
        let values: Vec<_> = v.iter().map(|i| i.value.as_str()).collect();
        assert_eq!(
            values,
            ["ads.example", "tracker.example", "x.example", "y.example"]
        );
        assert!(
            v.iter()
                .all(|i| i.kind == IndicatorType::DomainName && i.action == Action::Block)
        );

        let e = list_err("0.0.0.0 ok.example\n0.0.0.0 bad_name!.example\n");
        assert_eq!(
            e,
            "not a valid indicator file: line 2: host name \"bad_name!.example\": not a valid domain name: invalid character '!'"
        );
        let e = list_err("example.com other.example\n");
        assert!(
            e.starts_with("not a valid indicator file: line 1: expected one entry"),
            "{e}"
        );
    }

    #[test]
    fn plain_list() {
        use IndicatorType::*;
        let text = "\u{feff}# blocklist\r\n\
                    \r\n\
                    example.com\r\n\
                    *.Wild.Example   # comment\r\n\
                    198.18.0.1\r\n\
                    10.0.0.0/8\r\n\
                    2001:db8::/32\r\n\
                    ::ffff:192.0.2.1\r\n\
                    http://shop.example/checkout\r\n\
                    localhost\r\n";
        let l = load_list(text, Action::Allowed).unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let v = all(&l);
        let got: Vec<(IndicatorType, String)> =
            v.iter().map(|i| (i.kind, i.target.to_string())).collect();
        assert_eq!(
            got,
            [
                (DomainName, "example.com".to_string()),
                (DomainName, "wild.example".to_string()),
                (IpAddress, "198.18.0.1/32".to_string()),
                (IpAddress, "10.0.0.0/8".to_string()),
                (IpAddress, "2001:db8::/32".to_string()),
                (IpAddress, "192.0.2.1/32".to_string()),
                (Url, "http://shop.example/checkout".to_string()),
                (DomainName, "localhost".to_string()),
            ]
        );
        assert!(v.iter().all(|i| i.action == Action::Allowed));
        assert!(load_list("", Action::Block).unwrap().indicators.is_empty());
    }

    #[test]
    fn plain_list_errors_name_the_line() {
        let e = list_err("ok.example\n# c\n10.1.2.3/8\n");
        assert_eq!(
            e,
            "not a valid indicator file: line 3: \"10.1.2.3/8\": host bits set in CIDR block 10.1.2.3/8 (did you mean 10.0.0.0/8?)"
        );
        let e = list_err("10.0.0\n");
        assert_eq!(
            e,
            "not a valid indicator file: line 1: \"10.0.0\": not an IP address or CIDR block"
        );
        let e = list_err("a\nb\n2001:db8::zz\n");
        assert!(
            e.starts_with("not a valid indicator file: line 3: \"2001:db8::zz\""),
            "{e}"
        );
        let e = list_err("a..b\n");
        assert!(
            e.starts_with("not a valid indicator file: line 1: \"a..b\": not a valid domain name"),
            "{e}"
        );
        let e = list_err("ftp://x.example/\n");
        assert!(
            e.starts_with(
                "not a valid indicator file: line 1: \"ftp://x.example/\": not a valid URL"
            ),
            "{e}"
        );
    }

    #[test]
    fn plain_list_duplicates_and_https_note() {
        let l = load_list(
            "example.com\n0.0.0.0 EXAMPLE.com\n10.0.0.1\n10.0.0.1/32\nhttps://h.example/p\nhttps://H.example/p\n",
            Action::Block,
        )
        .unwrap();
        assert_eq!(
            l.warnings,
            [
                "duplicate example.com: line 1 and line 2 (both Block); line 1 kept",
                "duplicate 10.0.0.1/32: line 3 and line 4 (both Block); line 3 kept",
                "line 5 (value \"https://h.example/p\"): https URL with a path: only the host can be enforced",
                "duplicate https://h.example/p: line 5 and line 6 (both Block); line 5 kept",
            ]
        );
        assert_eq!(l.indicators.len(), 3);
    }

    #[test]
    fn warnings_are_capped() {
        let text = "dup.example\n".repeat(150);
        let l = load_list(&text, Action::Block).unwrap();
        assert_eq!(l.indicators.len(), 1);
        assert_eq!(l.warnings.len(), MAX_WARNINGS + 1);
        assert_eq!(
            l.warnings.last().unwrap(),
            "… and 49 more warnings like these"
        );
    }

    #[test]
    fn conflict_with_audit() {
        let l = load_defender_csv(&csv(&[
            "IpAddress,10.0.0.0/8,,Audit,,a,,,,,,",
            "IpAddress,10.0.0.0/8,,Warn,,w,,,,,,",
            "IpAddress,10.0.0.0/8,,Block,,b,,,,,,",
        ]))
        .unwrap();
        assert_eq!(
            l.warnings,
            [
                "conflicting actions for 10.0.0.0/8: line 2 Audit, line 3 Warn (precedence decides: Warn)",
                "conflicting actions for 10.0.0.0/8: line 3 Warn, line 4 Block (precedence decides: Warn)",
            ]
        );
        let v = all(&l);
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].action, v[0].title.as_deref()),
            (Action::Warn, Some("w"))
        );
    }

    #[test]
    fn load_any_by_extension() {
        let dir = std::env::temp_dir().join(format!("nprot-import-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let json = write(
            "a.json",
            br#"{"indicators":[{"type":"DomainName","value":"j.example","action":"Warn"}]}"#,
        );
        let l = load_any(&json, Action::Block).unwrap();
        assert_eq!(l.indicators.get(0).unwrap().action(), Action::Warn);

        let csv_path = write(
            "b.CSV",
            b"IndicatorType,IndicatorValue,Action\r\nUrl,http://c.example/x,Audit\r\n",
        );
        let l = load_any(&csv_path, Action::Block).unwrap();
        assert_eq!(l.indicators.get(0).unwrap().kind(), IndicatorType::Url);

        for name in ["c.txt", "d.list", "hosts"] {
            let p = write(name, b"0.0.0.0 l.example\n198.18.0.1\n");
            let l = load_any(&p, Action::Allowed).unwrap();
            assert_eq!(l.indicators.len(), 2, "{name}");
            assert!(l.indicators.iter().all(|r| r.action() == Action::Allowed));
        }

        let bad = write(
            "bad.csv",
            b"IndicatorType,IndicatorValue,Action\nDomainName,x.example,Nope\n",
        );
        let e = load_any(&bad, Action::Block).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "{}: not a valid indicator file: line 2, column Action: unknown action \"Nope\"",
                bad.display()
            )),
            "{e}"
        );
        let bad = write("bad.txt", b"ok.example\n\xff.example\n");
        let e = load_any(&bad, Action::Block).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: not a valid indicator file: line 2: not UTF-8 text (save the file as UTF-8)",
                bad.display()
            )
        );
        let utf16 = write("w.csv", b"\xff\xfeI\0n\0");
        let e = load_any(&utf16, Action::Block).unwrap_err().to_string();
        assert!(
            e.ends_with("line 1: the file is UTF-16 text: save it as UTF-8"),
            "{e}"
        );
        let missing = dir.join("missing.txt");
        let e = load_any(&missing, Action::Block).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("cannot read {}: ", missing.display())),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
