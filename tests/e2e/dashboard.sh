#!/usr/bin/env bash
# The web dashboard (issue 17, item 6) in a real headless Chromium driven
# over WebDriver (Debian's chromium, chromium-driver and python3-selenium),
# with the appliance's certificate pinned by its SPKI hash: a dr-admin logs
# in with password + TOTP and sees the VPG, its RPO and the RPO chart; an
# operator starts and stops a test failover, each after a confirmation that
# names the checkpoint; a viewer sees no failover button and the API
# refuses the viewer's failover (403). No console errors, no request to any
# other host. Screenshots go to build/artifacts/dashboard/.
source "$(dirname "$0")/../lib/common.sh"

setup_pair async 1000 disk0:16M
API=127.0.0.3
cat >>"$WORK/recovery.toml" <<TOML
[exports]
listen = "127.0.0.1:$((PORT_BASE + 6))"
[api]
listen = "$API:4006"
TOML
add_user() { # NAME ROLE PASSWORD
    echo "$3" | "$TIDEMARK_TEST" user add --config "$WORK/recovery.toml" "$1" --role "$2" --assume-console --password-stdin
}
add_user view1 viewer "viewer password 1" >/dev/null
add_user oper1 operator "operator password 1" >/dev/null
DRA_URI=$(add_user dra1 dr-admin "dr-admin password 1" | grep '^otpauth://')
start_recovery
start_protected
head -c 4M /dev/urandom >"$WORK/chunk"
nbdcopy "$WORK/chunk" "$NBD_URI/disk0"
wait_replicated 60
SPKI=$(openssl x509 -in "$WORK/b/keys/cert.pem" -pubkey -noout | openssl pkey -pubin -outform der |
    openssl dgst -sha256 -binary | base64)
ARTIFACTS=$ROOT/build/artifacts/dashboard
rm -rf "$ARTIFACTS"
mkdir -p "$ARTIFACTS"
export API SPKI DRA_URI ARTIFACTS WORK
# Debian's python3 (its selenium), with the tests' helpers on the path.
/usr/bin/python3 - <<'PY' || fail "the dashboard checks failed"
import json, os, sys, time
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from selenium.common.exceptions import StaleElementReferenceException
from api_client import totp, totp_secret

E = os.environ
ORIGIN = "https://%s:4006" % E["API"]
options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", "--window-size=1280,1400",
             "--user-data-dir=" + E["WORK"] + "/chromium",
             # The appliance's self-signed certificate, pinned by its key.
             "--ignore-certificate-errors-spki-list=" + E["SPKI"]]:
    options.add_argument(flag)
options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
# The page re-renders its tables on every poll: an element found just
# before a re-render is stale by the time its text is read; the wait tries
# again instead of failing.
wait = WebDriverWait(driver, 30, ignored_exceptions=[StaleElementReferenceException])


def text_of(by, what):
    """An element's text, found again if a re-render made it stale."""
    for _ in range(50):
        try:
            return driver.find_element(by, what).text
        except StaleElementReferenceException:
            time.sleep(0.1)
    return driver.find_element(by, what).text


failures = []
requested = set()

def check(ok, what):
    if not ok:
        failures.append(what)
        print("FAIL:", what, flush=True)

def shot(name):
    driver.save_screenshot(os.path.join(E["ARTIFACTS"], name + ".png"))

def drain_logs(where):
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requested.add(message["params"]["request"]["url"])
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    check(not errors, "console errors %s: %s" % (where, errors))

def login(user, password, code=None):
    driver.get(ORIGIN + "/")
    wait.until(lambda d: d.find_element(By.ID, "login-user").is_displayed())
    driver.find_element(By.ID, "login-user").send_keys(user)
    driver.find_element(By.ID, "login-password").send_keys(password)
    if code:
        driver.find_element(By.ID, "login-totp").send_keys(code)
    driver.find_element(By.ID, "login-submit").click()
    wait.until(lambda d: d.find_element(By.ID, "app").is_displayed())
    check(driver.find_element(By.ID, "who").text.startswith(user), "logged in as %s: %r" % (user, driver.find_element(By.ID, "who").text))

def logout():
    driver.find_element(By.ID, "logout").click()
    wait.until(lambda d: d.find_element(By.ID, "login-panel").is_displayed())

def confirm(expect_in_text):
    wait.until(lambda d: d.find_element(By.ID, "confirm").is_displayed())
    text = driver.find_element(By.ID, "confirm-text").text
    check(expect_in_text in text, "the confirmation %r does not name %r" % (text, expect_in_text))
    driver.find_element(By.ID, "confirm-yes").click()
    return text

try:
    # --- dr-admin: password + TOTP; the VPG, its RPO and the chart
    login("dra1", "dr-admin password 1", totp(totp_secret(E["DRA_URI"])))
    row = wait.until(lambda d: d.find_element(By.ID, "vpg-vpg1"))
    state = row.find_element(By.CLASS_NAME, "state").text
    rpo = row.find_element(By.CLASS_NAME, "rpo").text
    check(state == "protected" and rpo.endswith(" s"), "the VPG row: state %r, RPO %r" % (state, rpo))
    points = lambda d: max([len(l.get_attribute("points").split()) for l in d.find_elements(By.CSS_SELECTOR, "#rpo-chart polyline")] or [0])
    wait.until(lambda d: points(d) >= 2)
    check(driver.find_element(By.CSS_SELECTOR, "#rpo-chart polyline").get_attribute("data-vpg") == "vpg1", "the chart's series is not vpg1")
    check(driver.find_element(By.ID, "act-failover").is_displayed(), "a dr-admin sees no failover button")
    shot("1-dr-admin-overview")
    print("dr-admin with TOTP: VPG vpg1 %s, RPO %s, chart of %d points, failover offered" % (state, rpo, points(driver)))
    drain_logs("as the dr-admin")
    logout()

    # --- operator: a test failover, started and stopped, each confirmed
    login("oper1", "operator password 1")
    wait.until(lambda d: d.find_element(By.ID, "act-test-start").is_displayed())
    check(not driver.find_element(By.ID, "act-failover").is_displayed(), "an operator sees the failover button")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#checkpoint-select option")) > 0)
    chosen = driver.find_element(By.ID, "checkpoint-select").get_attribute("value")
    driver.find_element(By.ID, "act-test-start").click()
    shot("2-operator-confirm")
    text = confirm(chosen)
    wait.until(lambda d: "Test failover start: done" in d.find_element(By.ID, "message").text)
    wait.until(lambda d: "test failover running" in d.find_element(By.CSS_SELECTOR, "#vpg-vpg1 .note").text)
    check("nbd://" in text_of(By.ID, "message"), "no export shown: %r" % text_of(By.ID, "message"))
    shot("3-operator-test-failover-running")
    print("operator: confirmed %r; %s" % (text, text_of(By.ID, "message")[:100]))
    driver.find_element(By.ID, "act-test-stop").click()
    confirm("vpg1")
    wait.until(lambda d: "Test failover stop: done" in d.find_element(By.ID, "message").text)
    shot("4-operator-test-failover-stopped")
    audit_text = text_of(By.ID, "audit")
    check("test-failover start" in audit_text and "oper1" in audit_text, "the audit table lacks the test failover")
    drain_logs("as the operator")
    logout()

    # --- viewer: no failover button, and the API refuses one
    login("view1", "viewer password 1")
    wait.until(lambda d: d.find_element(By.ID, "vpg-vpg1"))
    time.sleep(1)
    for button in ("act-failover", "act-test-start"):
        check(not driver.find_element(By.ID, button).is_displayed(), "a viewer sees %s" % button)
    shot("5-viewer")
    drain_logs("as the viewer")
    status = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch('/api/v1/vpgs/vpg1/failover', {method: 'POST', headers: {'Authorization': 'Bearer ' +
              sessionStorage.getItem('tidemark-session'), 'Content-Type': 'application/json'},
              body: JSON.stringify({checkpoint: 'latest'})}).then(r => done(r.status));""")
    check(status == 403, "a viewer's failover from the page: %s" % status)
    print("viewer: no failover or test failover button; the API answers the page's failover with", status)
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requested.add(message["params"]["request"]["url"])
    # The browser's own pages (chrome://, its first blank tab) are not the network.
    network = [u for u in requested if u.split(":", 1)[0] in ("http", "https", "ws", "wss", "ftp")]
    outside = sorted(u for u in network if not u.startswith(ORIGIN + "/"))
    check(not outside, "requests to other hosts: %s" % outside)
    print("%d distinct network URLs requested, all on %s; no console errors" % (len(network), ORIGIN))
finally:
    driver.quit()
sys.exit(1 if failures else 0)
PY
ls "$ARTIFACTS"/*.png >/dev/null || fail "no screenshots"
log "screenshots: $(ls "$ARTIFACTS" | tr '\n' ' ')"
