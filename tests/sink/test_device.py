"""tracker/enrich/device.py: User-Agent -> device type, OS family, browser family."""

from __future__ import annotations

import dataclasses

import pytest

from tracker.sink.enrich.device import DEVICE_TYPES, Device, parse_device

CHROME_WIN = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
FB_IOS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/470.0.0.39.103;FBBV/634409583;FBDV/iPhone14,5;"
    "FBMD/iPhone;FBSN/iOS;FBSV/17.5.1;FBSS/3;FBID/phone;FBLC/en_US;FBOP/5;FBRV/635882021]"
)

# Real User-Agent strings, hand-labelled with uap-core's family names.
CASES = [
    # desktop
    (CHROME_WIN, "desktop", "Windows", "Chrome"),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
        "desktop",
        "Mac OS X",
        "Chrome",
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
        "desktop",
        "Windows",
        "Firefox",
    ),
    (
        "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        "desktop",
        "Ubuntu",
        "Firefox",
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/18.1.1 Safari/605.1.15",
        "desktop",
        "Mac OS X",
        "Safari",
    ),
    (CHROME_WIN + " Edg/131.0.2903.86", "desktop", "Windows", "Edge"),
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
        "desktop",
        "Linux",
        "Chrome",
    ),
    (
        "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
        "desktop",
        "Chrome OS",
        "Chrome",
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/130.0.0.0 Safari/537.36 OPR/115.0.0.0",
        "desktop",
        "Windows",
        "Opera",
    ),
    # "Tablet PC" in an old Windows UA is a laptop feature flag
    (
        "Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 6.1; Trident/4.0; SLCC2; Tablet PC 2.0)",
        "desktop",
        "Windows",
        "IE",
    ),
    # mobile, browsers
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
        "like Gecko) Version/18.1.1 Mobile/15E148 Safari/604.1",
        "mobile",
        "iOS",
        "Mobile Safari",
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) CriOS/131.0.6778.73 Mobile/15E148 Safari/604.1",
        "mobile",
        "iOS",
        "Chrome Mobile iOS",
    ),
    (
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Mobile Safari/537.36",
        "mobile",
        "Android",
        "Chrome Mobile",
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
        "mobile",
        "Android",
        "Samsung Internet",
    ),
    (
        "Mozilla/5.0 (Android 14; Mobile; rv:133.0) Gecko/133.0 Firefox/133.0",
        "mobile",
        "Android",
        "Firefox Mobile",
    ),
    # mobile, in-app browsers
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Mobile/15E148 Instagram 337.0.3.23.54 (iPhone14,2; iOS 17_5; en_US; en; "
        "scale=3.00; 1170x2532; 614015212)",
        "mobile",
        "iOS",
        "Instagram",
    ),
    (FB_IOS, "mobile", "iOS", "Facebook"),
    (
        "Mozilla/5.0 (Linux; Android 14; SM-A546B Build/UP1A.231005.007; wv) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Version/4.0 Chrome/131.0.6778.81 Mobile Safari/537.36 "
        "[FB_IAB/FB4A;FBAV/491.0.0.54.109;]",
        "mobile",
        "Android",
        "Facebook",
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; SM-S911B Build/UP1A.231005.007; wv) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Version/4.0 Chrome/124.0.6367.82 Mobile Safari/537.36 Instagram "
        "330.0.0.40.92 Android (34/14; 480dpi; 1080x2340; samsung; SM-S911B; dm1q; qcom; en_US; "
        "596227453)",
        "mobile",
        "Android",
        "Instagram",
    ),
    # tablet
    (
        "Mozilla/5.0 (iPad; CPU OS 17_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.7 Mobile/15E148 Safari/604.1",
        "tablet",
        "iOS",
        "Mobile Safari",
    ),
    # Chrome's reduced UA: a tablet is an Android UA without "Mobile"
    (
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
        "tablet",
        "Android",
        "Chrome",
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/26.0 Chrome/122.0.0.0 Safari/537.36",
        "tablet",
        "Android",
        "Samsung Internet",
    ),
    (
        "Mozilla/5.0 (Linux; Android 9; KFTRWI) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Silk/131.3.1 like Chrome/131.0.6778.200 Safari/537.36",
        "tablet",
        "Android",
        "Amazon Silk",
    ),
    # tv
    (
        "Mozilla/5.0 (SMART-TV; LINUX; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko) "
        "76.0.3809.146/6.0 TV Safari/537.36",
        "tv",
        "Tizen",
        "Safari",
    ),
    (
        "Mozilla/5.0 (Web0S; Linux/SmartTV) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/87.0.4280.88 Safari/537.36 WebAppManager",
        "tv",
        "Web0S",
        "Chrome",
    ),
    # Fire TV: the same Silk browser as a Kindle tablet, told apart by the AFT* model
    (
        "Mozilla/5.0 (Linux; Android 9; AFTKA) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Silk/112.5.1 like Chrome/112.0.5615.213 Safari/537.36",
        "tv",
        "Android",
        "Amazon Silk",
    ),
    (
        "Mozilla/5.0 (Linux; Android 12.0; Build/STTL.240206.002) AppleWebKit/537.36 (KHTML, like "
        "Gecko) Chrome/124.0.0.0 Safari/537.36 CrKey/1.56.500000 DeviceType/AndroidTV",
        "tv",
        "Chromecast Android",
        "Chrome",
    ),
    # console
    (
        "Mozilla/5.0 (PlayStation; PlayStation 5/2.26) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/13.0 Safari/605.1.15",
        "console",
        "Other",
        "Safari",
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; Xbox; Xbox Series X) AppleWebKit/537.36 (KHTML, "
        "like Gecko) Chrome/48.0.2564.82 Safari/537.36 Edge/20.02",
        "console",
        "Windows",
        "Edge",
    ),
    (
        "Mozilla/5.0 (Nintendo Switch; WifiWebAuthApplet) AppleWebKit/606.4 (KHTML, like Gecko) "
        "NF/6.0.1.15.4 NintendoBrowser/5.1.0.20393",
        "console",
        "Other",
        "Other",
    ),
    # bot: crawlers, HTTP libraries, headless browsers
    (
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "bot",
        "Other",
        "Googlebot",
    ),
    (
        "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like "
        "Gecko) Chrome/131.0.6778.69 Mobile Safari/537.36 (compatible; Googlebot/2.1; "
        "+http://www.google.com/bot.html)",
        "bot",
        "Android",
        "Googlebot",
    ),
    (
        "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; "
        "+http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36",
        "bot",
        "Other",
        "bingbot",
    ),
    ("curl/8.5.0", "bot", "Other", "curl"),
    ("python-requests/2.32.3", "bot", "Other", "Python Requests"),
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "HeadlessChrome/131.0.6778.33 Safari/537.36",
        "bot",
        "Linux",
        "HeadlessChrome",
    ),
    # other: not a browser, nothing to place it
    ("Xiaoyuzhou/1.9.0", "other", "Other", "Other"),
    # empty
    ("", "", "", ""),
]


@pytest.mark.parametrize(("ua", "device_type", "os", "browser"), CASES)
def test_parse_device(ua: str, device_type: str, os: str, browser: str):
    assert parse_device(ua) == Device(device_type, os, browser)


def test_cases_cover_every_device_type():
    assert {case[1] for case in CASES} == set(DEVICE_TYPES)


def test_whitespace_only_is_empty():
    assert parse_device("   ") == Device("", "", "")


def test_ipados_desktop_mode_reads_as_a_mac():
    # iPadOS Safari sends the Mac UA by default: no UA-only parser can tell (documented limit).
    ipad = (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.4 Safari/605.1.15"
    )
    assert parse_device(ipad).device_type == "desktop"


def test_android_non_browser_clients_count_as_phones():
    dalvik = "Dalvik/2.1.0 (Linux; U; Android 13; SM-A536B Build/TP1A.220624.014)"
    assert parse_device(dalvik).device_type == "mobile"


# "\ud83d" is a lone surrogate, which the native parser cannot take as UTF-8.
@pytest.mark.parametrize(
    "ua", ["\u00e9\u00e8 \U0001f600", "\ud83d", "x" * 1024, "()", "Mozilla/5.0"]
)
def test_junk_never_raises(ua: str):
    assert parse_device(ua).device_type in DEVICE_TYPES


def test_cached_by_user_agent():
    ua = CHROME_WIN + " cache-test"
    first = parse_device(ua)
    hits = parse_device.cache_info().hits
    assert parse_device(ua) is first
    assert parse_device.cache_info().hits == hits + 1
    assert parse_device.cache_info().maxsize == 65536


def test_device_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse_device(CHROME_WIN).os = "Linux"  # type: ignore[misc]
