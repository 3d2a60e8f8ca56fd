//! `crm seed`: realistic synthetic customers for demos and benchmarks: Chinese and
//! Latin names, CN and international phones, addresses, a controlled share of noisy
//! duplicates (another external id, reformatted phone, typos, missing fields) and of
//! missing fields. Deterministic for a given seed. The `entity` column holds the true
//! identity of each row, so duplicate detection can be scored.

use std::collections::BTreeMap;

/// SplitMix64: small, fast, deterministic; not for secrets.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }

    fn digits(&mut self, n: usize) -> String {
        (0..n).map(|_| char::from(b'0' + self.below(10) as u8)).collect()
    }
}

const CN_FAMILY: &[&str] = &[
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭", "何", "高", "林", "罗", "郑",
    "梁", "谢", "宋", "唐",
];
const CN_GIVEN: &[&str] = &[
    "伟", "芳", "娜", "秀英", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超", "秀兰", "霞",
    "平", "刚", "桂英", "小明", "晓红", "建国", "志强", "海燕", "子涵", "梓萱", "浩然", "一诺", "欣怡", "宇轩", "雨桐",
];
const LATIN_GIVEN: &[&str] = &[
    "James",
    "Mary",
    "John",
    "Patricia",
    "Robert",
    "Jennifer",
    "Michael",
    "Linda",
    "William",
    "Elizabeth",
    "David",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Charles",
    "Karen",
    "Daniel",
    "Nancy",
    "Matthew",
    "Lisa",
    "Anthony",
    "Sofia",
    "Lucas",
    "Emma",
    "Noah",
    "Olivia",
];
const LATIN_FAMILY: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Wilson",
    "Anderson",
    "Taylor",
    "Thomas",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Thompson",
    "White",
    "Harris",
    "Clark",
    "Lewis",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Green",
];
/// (city, province, postcode prefix)
const CN_CITIES: &[(&str, &str, &str)] = &[
    ("北京", "北京市", "100"),
    ("上海", "上海市", "200"),
    ("广州", "广东省", "510"),
    ("深圳", "广东省", "518"),
    ("杭州", "浙江省", "310"),
    ("成都", "四川省", "610"),
    ("南京", "江苏省", "210"),
    ("武汉", "湖北省", "430"),
];
const CN_ROADS: &[&str] = &["南京路", "中山路", "人民路", "解放路", "建设路", "和平路", "长江路", "学府路"];
/// (city, state, ZIP prefix)
const US_CITIES: &[(&str, &str, &str)] = &[
    ("San Francisco", "CA", "941"),
    ("New York", "NY", "100"),
    ("Seattle", "WA", "981"),
    ("Austin", "TX", "787"),
];
const US_STREETS: &[&str] = &[
    "Main Street",
    "Oak Avenue",
    "Pine Street",
    "Maple Drive",
    "Cedar Lane",
    "Elm Street",
];
const CN_MOBILE: &[&str] = &[
    "130", "131", "132", "135", "136", "137", "138", "139", "150", "151", "152", "158", "159", "186", "187", "188",
];
const MAIL_DOMAINS: &[&str] = &["qq.com", "163.com", "example.com", "example.cn", "mail.example.org"];

/// The columns `crm seed` writes, and the field each maps to.
pub const MAPPING: &[(&str, &str)] = &[
    ("id", "external_id"),
    ("given", "person_name.given_name"),
    ("family", "person_name.family_name"),
    ("mobile", "phone_numbers"),
    ("email", "email_addresses"),
    ("street", "addresses.address_lines"),
    ("city", "addresses.locality"),
    ("province", "addresses.administrative_area"),
    ("zip", "addresses.postal_code"),
    ("country", "addresses.region_code"),
    ("dob", "birth_date"),
];

/// Every column, `entity` (the true identity) first.
pub const COLUMNS: &[&str] = &[
    "entity", "id", "given", "family", "mobile", "email", "street", "city", "province", "zip", "country", "dob",
];

#[derive(Debug, Clone)]
pub struct Options {
    pub customers: usize,
    /// Share of rows that are noisy copies of an earlier customer.
    pub duplicates: f64,
    /// Chance that each optional field is left empty.
    pub missing: f64,
    pub seed: u64,
}

pub type Row = BTreeMap<String, String>;

fn original(rng: &mut Rng, entity: usize, missing: f64) -> Row {
    let mut r = Row::new();
    let cn = rng.chance(0.7);
    let (given, family) = if cn {
        (rng.pick(CN_GIVEN).to_owned(), rng.pick(CN_FAMILY).to_owned())
    } else {
        (rng.pick(LATIN_GIVEN).to_owned(), rng.pick(LATIN_FAMILY).to_owned())
    };
    r.insert("given".into(), given);
    r.insert("family".into(), family);
    let phone = if cn {
        format!("{}{}", rng.pick(CN_MOBILE), rng.digits(8))
    } else if rng.chance(0.7) {
        format!(
            "+1 {} {}{} {}",
            rng.pick(&["415", "212", "646", "206"]),
            2 + rng.below(8),
            rng.digits(2),
            rng.digits(4)
        )
    } else {
        format!("+44 20 7946 0{}", rng.digits(3))
    };
    let mail = format!("user{entity}.{}@{}", rng.digits(3), rng.pick(MAIL_DOMAINS));
    let (street, city, province, zip, country) = if cn {
        let (city, province, prefix) = CN_CITIES[rng.below(CN_CITIES.len() as u64) as usize];
        (
            format!("{}号 {}", 1 + rng.below(300), rng.pick(CN_ROADS)),
            city,
            province,
            format!("{prefix}{}", rng.digits(3)),
            "CN",
        )
    } else {
        let (city, state, prefix) = US_CITIES[rng.below(US_CITIES.len() as u64) as usize];
        (
            format!("{} {}", 1 + rng.below(2000), rng.pick(US_STREETS)),
            city,
            state,
            format!("{prefix}{}", rng.digits(2)),
            "US",
        )
    };
    let dob = format!("{}-{:02}-{:02}", 1950 + rng.below(55), 1 + rng.below(12), 1 + rng.below(28));
    let mut optional = |key: &str, value: String, r: &mut Row| {
        if !rng.chance(missing) {
            r.insert(key.into(), value);
        }
    };
    optional("mobile", phone, &mut r);
    optional("email", mail, &mut r);
    optional("dob", dob, &mut r);
    if !rng.chance(missing) {
        r.insert("street".into(), street);
        r.insert("city".into(), city.into());
        r.insert("province".into(), province.into());
        r.insert("zip".into(), zip);
        r.insert("country".into(), country.into());
    }
    r
}

/// A typo: two neighbouring characters swapped, or one dropped.
fn typo(rng: &mut Rng, s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    if chars.len() < 3 {
        return s.to_owned();
    }
    let i = 1 + rng.below(chars.len() as u64 - 2) as usize;
    if rng.chance(0.5) {
        chars.swap(i, i + 1);
    } else {
        chars.remove(i);
    }
    chars.into_iter().collect()
}

/// A noisy copy: the same person as a channel system would send it again.
fn noisy(rng: &mut Rng, of: &Row) -> Row {
    let mut r = of.clone();
    if let Some(phone) = r.get("mobile").cloned() {
        let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
        let reformatted = if phone.starts_with('+') || digits.len() != 11 {
            phone
        } else if rng.chance(0.5) {
            format!("+86 {} {} {}", &digits[..3], &digits[3..7], &digits[7..])
        } else {
            format!("{}-{}-{}", &digits[..3], &digits[3..7], &digits[7..])
        };
        r.insert("mobile".into(), reformatted);
    }
    if let Some(mail) = r.get("email").cloned()
        && rng.chance(0.5)
    {
        r.insert("email".into(), mail.to_uppercase());
    }
    let given = r.get("given").cloned().unwrap_or_default();
    if given.is_ascii() && rng.chance(0.4) {
        r.insert("given".into(), typo(rng, &given));
    }
    if let Some(street) = r.get("street").cloned()
        && rng.chance(0.3)
    {
        r.insert("street".into(), street.replace("Street", "St").replace("Avenue", "Ave"));
    }
    for key in ["email", "dob", "mobile"] {
        if rng.chance(0.15) {
            r.remove(key);
        }
    }
    r
}

/// The rows, in order; `id` is `S{row}`, `entity` the true identity.
pub fn generate(o: &Options) -> Vec<Row> {
    let mut rng = Rng::new(o.seed);
    let mut rows: Vec<Row> = Vec::with_capacity(o.customers);
    for i in 0..o.customers {
        let mut row = if i > 0 && rng.chance(o.duplicates) {
            let of = &rows[rng.below(i as u64) as usize];
            noisy(&mut rng, of)
        } else {
            let mut r = original(&mut rng, i, o.missing);
            r.insert("entity".into(), format!("E{i}"));
            r
        };
        row.insert("id".into(), format!("S{i}"));
        rows.push(row);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_with_the_requested_shares() {
        let o = Options {
            customers: 5000,
            duplicates: 0.1,
            missing: 0.2,
            seed: 7,
        };
        let a = generate(&o);
        assert_eq!(a, generate(&o));
        assert_eq!(a.len(), 5000);
        let entities: std::collections::HashSet<_> = a.iter().map(|r| r["entity"].clone()).collect();
        let dup_share = 1.0 - entities.len() as f64 / a.len() as f64;
        assert!((0.08..0.12).contains(&dup_share), "{dup_share}");
        let no_mail = a.iter().filter(|r| !r.contains_key("email")).count() as f64 / a.len() as f64;
        assert!((0.15..0.3).contains(&no_mail), "{no_mail}");
        let cn = a.iter().filter(|r| r.get("country").is_some_and(|c| c == "CN")).count();
        assert!(cn > 2000, "{cn}");
    }

    #[test]
    fn typos_change_but_keep_length_close() {
        let mut rng = Rng::new(1);
        for _ in 0..100 {
            let t = typo(&mut rng, "Jennifer");
            assert!(t.len() == 8 || t.len() == 7, "{t}");
        }
    }
}
