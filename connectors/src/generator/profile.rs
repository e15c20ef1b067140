//! The calibration profile: fixed tables the generator draws from.
//!
//! Figures are those of the public REES46 "eCommerce behavior data from multi category
//! store", November 2019 (67.5M events in 30 days): event-type shares, price quantiles,
//! the dotted category taxonomy and the most common brands. Everything here is plain
//! data; the model that uses it lives in the sibling modules.

/// Target overall share of `view` events (REES46: 94.2%; see [`REMOVE_SHARE`]).
pub(crate) const VIEW_SHARE: f64 = 0.9400;
/// Target overall share of `cart` events (REES46: 4.5%).
pub(crate) const CART_SHARE: f64 = 0.0438;
/// Target overall share of `purchase` events (REES46: 1.36%).
pub(crate) const PURCHASE_SHARE: f64 = 0.0132;
/// Target overall share of `remove_from_cart` events. The November 2019 multi-category
/// file has none (its three shares already sum to 100.06%); the cosmetics files of the
/// same shop have them, and the contract needs them, so 0.3% is taken from the others,
/// each staying within 0.3 points of its REES46 figure.
pub(crate) const REMOVE_SHARE: f64 = 0.0030;

/// After a cart event: probability that the session goes on viewing.
pub(crate) const CART_THEN_VIEW: f64 = 0.35;
/// After a purchase: probability that the session goes on viewing.
pub(crate) const PURCHASE_THEN_VIEW: f64 = 0.30;
/// After a removal from the cart: probability that the session goes on viewing.
pub(crate) const REMOVE_THEN_VIEW: f64 = 0.60;
/// Expected number of views per session (REES46 has about 4.9 events per session).
pub(crate) const MEAN_VIEWS_PER_SESSION: f64 = 4.7;
/// Mean time between two events of one session, in milliseconds.
pub(crate) const MEAN_SESSION_GAP_MS: f64 = 40_000.0;
/// Share of sessions without a `user_session` (no cookie): about 1% of events.
pub(crate) const NULL_SESSION_SHARE: f64 = 0.01;
/// Probability that a session's focus category is one of the user's favourites.
pub(crate) const FAVOURITE_FOCUS: f64 = 0.85;
/// Per view after the first: probability of staying in the focus category.
pub(crate) const VIEW_SAME_CATEGORY: f64 = 0.75;
/// Per view after the first: probability of viewing the last product again.
pub(crate) const VIEW_REVISIT: f64 = 0.10;
/// Offset of the user-activity Zipf law (weight of the r-th most active user ∝ 1/(r+c)).
pub(crate) const USER_ZIPF_OFFSET: f64 = 100.0;
/// Share of sessions that use the user's usual channel (else one drawn at random).
pub(crate) const USUAL_CHANNEL: f64 = 0.8;
/// Share of sessions from the user's home IP (else a random address of the same country).
pub(crate) const HOME_IP: f64 = 0.85;

/// Target share of rows whose category has no code (REES46: about a third).
pub(crate) const CATEGORY_CODE_NULL_SHARE: f64 = 1.0 / 3.0;
/// Target share of rows without a brand (REES46: about 15%).
pub(crate) const BRAND_NULL_SHARE: f64 = 0.15;
/// Target share of rows with price 0 (REES46: about 0.3%).
pub(crate) const ZERO_PRICE_SHARE: f64 = 0.003;

/// Row-weighted price quantiles `(u, price)`, linearly interpolated: p50 165, p90 758,
/// p99 1682, min 0.77, max 2574.07 as in REES46; the knots between were taken from a
/// log-linear interpolation of those anchors so no `exp`/`ln` is needed at run time.
pub(crate) const PRICE_QUANTILES: &[(f64, f64)] = &[
    (0.0000, 0.77),
    (0.0025, 1.16),
    (0.0050, 1.75),
    (0.0075, 2.65),
    (0.0100, 4.00),
    (0.0200, 5.26),
    (0.0300, 6.93),
    (0.0400, 9.12),
    (0.0500, 12.00),
    (0.0750, 16.25),
    (0.1000, 22.00),
    (0.1250, 26.42),
    (0.1500, 31.73),
    (0.1750, 38.11),
    (0.2000, 45.76),
    (0.2250, 54.96),
    (0.2500, 66.00),
    (0.2750, 72.33),
    (0.3000, 79.27),
    (0.3250, 86.88),
    (0.3500, 95.22),
    (0.3750, 104.36),
    (0.4000, 114.37),
    (0.4250, 125.34),
    (0.4500, 137.37),
    (0.4750, 150.55),
    (0.5000, 165.00),
    (0.5250, 178.39),
    (0.5500, 192.86),
    (0.5750, 208.51),
    (0.6000, 225.43),
    (0.6250, 243.72),
    (0.6500, 263.50),
    (0.6750, 284.88),
    (0.7000, 307.99),
    (0.7250, 332.98),
    (0.7500, 360.00),
    (0.7750, 407.57),
    (0.8000, 461.41),
    (0.8250, 522.38),
    (0.8500, 591.40),
    (0.8750, 669.54),
    (0.9000, 758.00),
    (0.9250, 892.13),
    (0.9400, 983.75),
    (0.9500, 1050.00),
    (0.9600, 1181.27),
    (0.9700, 1328.95),
    (0.9800, 1495.09),
    (0.9900, 1682.00),
    (0.9950, 2080.77),
    (1.0000, 2574.07),
];

/// The price at row quantile `u` in `[0, 1]`.
pub(crate) fn price_at(u: f64) -> f64 {
    let u = u.clamp(0.0, 1.0);
    let i = PRICE_QUANTILES
        .partition_point(|&(q, _)| q <= u)
        .clamp(1, PRICE_QUANTILES.len() - 1);
    let (u0, p0) = PRICE_QUANTILES[i - 1];
    let (u1, p1) = PRICE_QUANTILES[i];
    p0 + (p1 - p0) * ((u - u0) / (u1 - u0))
}

/// Relative traffic at the start of each UTC hour (linearly interpolated between hours):
/// low at night, peak in the evening, shaped for an audience around UTC+3 as REES46's.
/// Normalised to mean 1 at run time.
pub(crate) const HOURLY: [f64; 24] = [
    0.45, 0.30, 0.22, 0.20, 0.25, 0.40, 0.65, 0.85, 1.00, 1.10, 1.15, 1.20, //
    1.20, 1.25, 1.30, 1.40, 1.55, 1.65, 1.60, 1.45, 1.25, 1.00, 0.80, 0.60,
];

/// Relative traffic per ISO weekday (Monday first), normalised to mean 1 at run time.
pub(crate) const WEEKLY: [f64; 7] = [1.02, 1.00, 0.98, 0.97, 0.93, 0.98, 1.12];

/// Top-level categories in popularity order, with the codes of their subcategories (the
/// REES46 taxonomy). Codes are `&'static str`, so cloning one as a `CompactString` never
/// allocates whatever its length.
pub(crate) const TAXONOMY: &[(&str, &[&str])] = &[
    (
        "electronics",
        &[
            "electronics.smartphone",
            "electronics.audio.headphone",
            "electronics.video.tv",
            "electronics.clocks",
            "electronics.tablet",
            "electronics.audio.subwoofer",
            "electronics.camera.video",
            "electronics.telephone",
            "electronics.audio.acoustic",
            "electronics.camera.photo",
            "electronics.audio.microphone",
            "electronics.video.projector",
            "electronics.audio.music_tools.piano",
            "electronics.audio.dictaphone",
        ],
    ),
    (
        "appliances",
        &[
            "appliances.kitchen.washer",
            "appliances.kitchen.refrigerators",
            "appliances.environment.vacuum",
            "appliances.kitchen.microwave",
            "appliances.environment.water_heater",
            "appliances.environment.air_heater",
            "appliances.kitchen.hood",
            "appliances.kitchen.kettle",
            "appliances.kitchen.blender",
            "appliances.kitchen.oven",
            "appliances.kitchen.mixer",
            "appliances.kitchen.coffee_machine",
            "appliances.kitchen.toster",
            "appliances.kitchen.meat_grinder",
            "appliances.kitchen.juicer",
            "appliances.kitchen.hob",
            "appliances.kitchen.dishwasher",
            "appliances.kitchen.grill",
            "appliances.kitchen.steam_cooker",
            "appliances.iron",
            "appliances.sewing_machine",
            "appliances.personal.hair_cutter",
            "appliances.personal.massager",
            "appliances.personal.scales",
            "appliances.environment.climate",
            "appliances.environment.air_conditioner",
            "appliances.ironing_board",
        ],
    ),
    (
        "computers",
        &[
            "computers.notebook",
            "computers.desktop",
            "computers.peripherals.printer",
            "computers.peripherals.monitor",
            "computers.peripherals.mouse",
            "computers.peripherals.keyboard",
            "computers.components.videocards",
            "computers.components.memory",
            "computers.components.hdd",
            "computers.components.cpu",
            "computers.components.motherboard",
            "computers.components.power_supply",
            "computers.components.cooler",
            "computers.network.router",
            "computers.ebooks",
            "computers.peripherals.camera",
        ],
    ),
    (
        "apparel",
        &[
            "apparel.shoes",
            "apparel.shoes.keds",
            "apparel.shoes.sandals",
            "apparel.shoes.slipons",
            "apparel.shoes.ballet_shoes",
            "apparel.costume",
            "apparel.trousers",
            "apparel.jeans",
            "apparel.shirt",
            "apparel.tshirt",
            "apparel.jacket",
            "apparel.dress",
            "apparel.underwear",
            "apparel.glove",
            "apparel.scarf",
            "apparel.belt",
            "apparel.sock",
        ],
    ),
    (
        "furniture",
        &[
            "furniture.living_room.sofa",
            "furniture.living_room.chair",
            "furniture.living_room.cabinet",
            "furniture.bedroom.bed",
            "furniture.bedroom.pillow",
            "furniture.bedroom.blanket",
            "furniture.kitchen.table",
            "furniture.kitchen.chair",
            "furniture.bathroom.bath",
            "furniture.bathroom.toilet",
            "furniture.universal.light",
            "furniture.universal.mattress",
        ],
    ),
    (
        "construction",
        &[
            "construction.tools.drill",
            "construction.tools.saw",
            "construction.tools.welding",
            "construction.tools.pump",
            "construction.tools.generator",
            "construction.tools.light",
            "construction.tools.heater",
            "construction.components.faucet",
            "construction.tools.screw",
        ],
    ),
    (
        "kids",
        &[
            "kids.toys",
            "kids.carriage",
            "kids.skates",
            "kids.swing",
            "kids.dolls",
            "kids.fmcg.diapers",
            "kids.bottles",
        ],
    ),
    (
        "auto",
        &[
            "auto.accessories.player",
            "auto.accessories.videoregister",
            "auto.accessories.radar",
            "auto.accessories.alarm",
            "auto.accessories.compressor",
            "auto.accessories.parktronic",
            "auto.accessories.winch",
        ],
    ),
    (
        "accessories",
        &[
            "accessories.bag",
            "accessories.wallet",
            "accessories.umbrella",
        ],
    ),
    (
        "sport",
        &[
            "sport.bicycle",
            "sport.ski",
            "sport.snowboard",
            "sport.tennis",
            "sport.trainer",
            "sport.diving",
            "sport.golf",
        ],
    ),
    ("medicine", &["medicine.tools.tonometer"]),
    (
        "country_yard",
        &[
            "country_yard.lawn_mower",
            "country_yard.cultivator",
            "country_yard.watering",
            "country_yard.weather_station",
            "country_yard.furniture.hammok",
        ],
    ),
    ("stationery", &["stationery.cartrige", "stationery.battery"]),
];

/// The most popular brands of the shop, in popularity order, with the top level (index
/// into [`TAXONOMY`]) they mostly sell in; further brands get generated names.
pub(crate) const KNOWN_BRANDS: &[(&str, u8)] = &[
    ("samsung", 0),
    ("apple", 0),
    ("xiaomi", 0),
    ("huawei", 0),
    ("lucente", 3),
    ("bosch", 1),
    ("lg", 1),
    ("oppo", 0),
    ("sony", 0),
    ("acer", 2),
    ("lenovo", 2),
    ("artel", 1),
    ("indesit", 1),
    ("respect", 3),
    ("hp", 2),
    ("asus", 2),
    ("cordiant", 7),
    ("elenberg", 1),
    ("redmond", 1),
    ("philips", 1),
    ("vitek", 1),
    ("polaris", 1),
    ("haier", 1),
    ("beko", 1),
    ("atlant", 1),
    ("tefal", 1),
    ("midea", 1),
    ("nokia", 0),
    ("honor", 0),
    ("canon", 0),
    ("nikon", 0),
    ("gorenje", 1),
    ("karcher", 5),
    ("makita", 5),
    ("intel", 2),
    ("logitech", 2),
    ("delonghi", 1),
    ("braun", 1),
    ("rowenta", 1),
    ("scarlett", 1),
    ("askona", 4),
    ("lego", 6),
    ("ariston", 1),
    ("casio", 0),
    ("garmin", 0),
    ("jbl", 0),
    ("dell", 2),
    ("msi", 2),
];

/// Share of a category's brands drawn from its own top level's brands (the rest from
/// all brands: big brands sell across top levels).
pub(crate) const BRAND_IN_TOP: f64 = 0.85;

/// Syllables for generated brand names (at most 3 syllables: always inline CompactStrings).
pub(crate) const BRAND_SYLLABLES: &[&str] = &[
    "ka", "lo", "vi", "ter", "mon", "ra", "zen", "bel", "tor", "mi", "sa", "no", "dex", "fi",
    "lux", "ver", "gal", "pro", "tek", "ar", "ol", "um", "is", "en", "vo", "rex", "ta", "ni",
    "sol", "mar",
];

/// Countries of the audience `(ISO 3166-1 alpha-2, weight, first octets of its IPs)`.
pub(crate) const COUNTRIES: &[(&str, f64, &[u8])] = &[
    (
        "RU",
        0.58,
        &[
            5, 31, 37, 46, 77, 78, 79, 85, 87, 89, 91, 92, 93, 94, 95, 176, 178, 188, 212, 213, 217,
        ],
    ),
    ("UA", 0.09, &[31, 37, 46, 91, 93, 176, 178, 193, 194]),
    ("KZ", 0.06, &[2, 5, 37, 89, 92, 95, 178]),
    ("BY", 0.05, &[37, 46, 86, 93, 178]),
    ("UZ", 0.04, &[84, 90, 185, 195, 213]),
    ("DE", 0.04, &[2, 5, 46, 77, 78, 79, 80, 84, 85, 87]),
    (
        "US",
        0.03,
        &[
            3, 8, 12, 23, 24, 50, 63, 64, 65, 66, 67, 68, 69, 70, 71, 96, 97, 98, 99, 104, 107, 108,
        ],
    ),
    ("PL", 0.03, &[31, 37, 46, 77, 78, 79, 83, 89, 91, 178]),
    ("TR", 0.03, &[31, 37, 46, 78, 81, 85, 88, 176]),
    ("GE", 0.02, &[31, 37, 94, 176, 188]),
    ("AM", 0.02, &[5, 37, 46, 87, 185]),
    ("IL", 0.01, &[2, 5, 31, 37, 46, 77, 79, 84, 109]),
];

/// Channel weights: web, app, social.
pub(crate) const CHANNEL_WEIGHTS: [f64; 3] = [0.55, 0.35, 0.10];

/// User agents of the web channel.
pub(crate) const WEB_AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/78.0.3904.97 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:70.0) Gecko/20100101 Firefox/70.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.0.3 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 6.1; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/78.0.3904.87 YaBrowser/19.12.0 Yowser/2.5 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 9; SM-A505FN) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/78.0.3904.108 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 13_2_3 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.0.3 Mobile/15E148 Safari/604.1",
];

/// User agents of the app channel.
pub(crate) const APP_AGENTS: &[&str] = &[
    "CapShop/4.12.0 (Android 9; Redmi Note 7)",
    "CapShop/4.12.0 (Android 10; SM-G973F)",
    "CapShop/4.11.2 (iOS 13.2; iPhone11,8)",
    "CapShop/4.11.2 (iOS 12.4; iPhone10,4)",
];

/// User agents of the social channel (in-app browsers).
pub(crate) const SOCIAL_AGENTS: &[&str] = &[
    "Mozilla/5.0 (iPhone; CPU iPhone OS 13_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 119.0.0.19.122",
    "Mozilla/5.0 (Linux; Android 9; Redmi Note 8) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/78.0.3904.96 Mobile Safari/537.36 VKAndroidApp/5.52-4543",
    "Mozilla/5.0 (Linux; Android 8.1.0; vivo 1820) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/78.0.3904.108 Mobile Safari/537.36 [FB_IAB/FB4A;FBAV/248.0.0.43.120;]",
];

/// User agents of scraping bots.
pub(crate) const BOT_AGENTS: &[&str] = &[
    "python-requests/2.22.0",
    "Mozilla/5.0 (compatible; PriceSpider/1.3)",
    "curl/7.64.1",
    "Go-http-client/1.1",
    "Scrapy/1.8.0 (+https://scrapy.org)",
];

/// User agents seen in DDoS bursts.
pub(crate) const DDOS_AGENTS: &[&str] = &[
    "Mozilla/5.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/78.0.3904.97 Safari/537.36",
    "Wget/1.20.3 (linux-gnu)",
    "-",
];

/// Mean gap between two events of a bot is drawn per bot in this range (milliseconds).
pub(crate) const BOT_MEAN_GAP_MS: (u64, u64) = (100, 500);

/// First user id: REES46 user ids are nine-digit numbers around 5.1e8.
pub(crate) const USER_ID_BASE: u64 = 512_000_000;
/// First product id (REES46 product ids are seven- and eight-digit numbers).
pub(crate) const PRODUCT_ID_BASE: u64 = 1_000_000;
/// First category id: REES46 category ids exceed 2^53 (they are 19-digit numbers).
pub(crate) const CATEGORY_ID_BASE: u64 = 2_053_013_552_259_662_037;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_table_hits_the_anchors() {
        assert!((price_at(0.5) - 165.0).abs() < 1e-9);
        assert!((price_at(0.9) - 758.0).abs() < 1e-9);
        assert!((price_at(0.99) - 1682.0).abs() < 1e-9);
        assert!((price_at(1.0) - 2574.07).abs() < 1e-9);
        for w in PRICE_QUANTILES.windows(2) {
            assert!(w[0].0 < w[1].0 && w[0].1 < w[1].1);
        }
    }

    #[test]
    fn shares_sum_to_one() {
        let s = VIEW_SHARE + CART_SHARE + PURCHASE_SHARE + REMOVE_SHARE;
        assert!((s - 1.0).abs() < 1e-12);
    }

    #[test]
    fn taxonomy_codes_start_with_their_top_level() {
        for (top, codes) in TAXONOMY {
            for c in *codes {
                assert!(c.starts_with(&format!("{top}.")), "{c}");
            }
        }
    }
}
