"""The dashboard at /ui, driven by headless Chromium (Debian's chromium and
chromium-driver, through selenium) against a cluster that asks for API keys.

A screenshot of each view is saved to test-artifacts/ui/ for a person to look at.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as seen
from selenium.webdriver.support.ui import WebDriverWait

from fum_cli.local import LocalCluster
from fum_client import Client, FunctionExecutor, TriggerflowExecutor

from .conftest import start_cluster
from .support import Api, targz

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-artifacts" / "ui"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory, auth=True)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    # .ci/run installs both; a machine without them fails here, loudly
    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), (
        "apt install chromium chromium-driver"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver: WebDriver, name: str) -> None:
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def wait_for(driver: WebDriver, css: str, timeout: float = 20) -> None:
    WebDriverWait(driver, timeout).until(seen.presence_of_element_located((By.CSS_SELECTOR, css)))


def give_key(driver: WebDriver, key: str) -> None:
    """Answer the page's request for an API key, as a person would."""
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()


def click(driver: WebDriver, css: str) -> bool:
    driver.find_element(By.CSS_SELECTOR, css).click()
    return True


def text_with(driver: WebDriver, element_id: str, part: str) -> str | None:
    text = driver.find_element(By.ID, element_id).text
    return text if part in text else None


def console_errors(driver: WebDriver) -> list[str]:
    """Errors the page logged, but the 401 the first load meets before a key is given."""
    logs = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [e["message"] for e in logs if e["level"] == "SEVERE" and "401" not in e["message"]]


CHATTY = (
    "def handle(params):\n    print('hello from', params['who'], flush=True)\n    return params\n"
)


async def test_the_dashboard_shows_nodes_functions_and_a_call_live(
    cluster: LocalCluster, browser: WebDriver
) -> None:
    assert cluster.api_key is not None
    key = {"Authorization": f"Bearer {cluster.api_key}"}
    browser.get(f"{cluster.url}/ui")
    wait_for(browser, "#key-form:not([hidden])")  # the api asks for a key: the page asks
    give_key(browser, cluster.api_key)
    wait_for(browser, "#nodes tr[data-node='0']")
    shot(browser, "nodes")
    assert "key" not in browser.current_url  # never in a URL

    async with aiohttp.ClientSession(cluster.url, headers=key) as session:
        api = Api(session)
        await api.runtime("pyh")
        status, body = await api.deploy("ui-chatty", "pyh", targz({"main.py": CHATTY}))
        assert status == 201, body
        browser.get(f"{cluster.url}/ui#functions")
        wait_for(browser, "#functions tr[data-function='ui-chatty']")
        shot(browser, "functions")

        browser.get(f"{cluster.url}/ui#calls")
        wait_for(browser, "#calls")
        status, call = await api.invoke("ui-chatty", {"who": "<b>a browser</b>"})
        assert status == 200 and call["status"] == "DONE", call
    num = call["callNum"]
    wait_for(browser, f"#calls tr[data-call='{num}']")  # appeared by itself
    shot(browser, "calls")
    # the view is drawn again every second: an element found may be gone when used
    patient = WebDriverWait(browser, 20, ignored_exceptions=[StaleElementReferenceException])
    patient.until(lambda d: click(d, f"#calls tr[data-call='{num}']"))
    wait_for(browser, f"#call[data-call='{num}']")
    logs = patient.until(lambda d: text_with(d, "logs", "hello from"))
    assert "hello from <b>a browser</b>" in logs  # shown as text, not as markup
    assert browser.find_elements(By.CSS_SELECTOR, "#logs b") == []
    shot(browser, "call")
    assert console_errors(browser) == []


def test_the_dashboard_is_static_and_locked_down(cluster: LocalCluster) -> None:
    with urllib.request.urlopen(f"{cluster.url}/ui", timeout=10) as page:  # no key needed
        assert page.headers["Content-Type"].startswith("text/html")
        policy = page.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
        assert page.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/ui/..%2Fviews.py", "/ui/views.py", "/ui/nothing.js"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{cluster.url}{path}", timeout=10)
        with refused.value:
            assert refused.value.code == 404, path
            assert json.loads(refused.value.read())["error"]["code"] == "not_found"
    with pytest.raises(urllib.error.HTTPError) as refused:  # the data needs the key
        urllib.request.urlopen(f"{cluster.url}/v1/nodes", timeout=10)
    with refused.value:
        assert refused.value.code == 401


def test_the_dashboard_draws_a_workflow_session(cluster: LocalCluster, browser: WebDriver) -> None:
    """The appstore's hello-bye: the app's steps in columns, then a session's instances."""
    with Client(cluster.url, cluster.api_key) as client:
        client.deploy_app("ui-hellobye", ROOT / "tests" / "data" / "unum" / "hello-bye")
        session = client.start_session("ui-hellobye", {"Data": {"Value": "hello"}}, timeout=60)
    assert session.status == "DONE", session
    browser.get(f"{cluster.url}/ui#apps")
    if browser.find_elements(By.CSS_SELECTOR, "#key-form:not([hidden])"):  # a fresh page
        give_key(browser, cluster.api_key or "")
    wait_for(browser, "#apps tr[data-app='ui-hellobye']")
    patient = WebDriverWait(browser, 20, ignored_exceptions=[StaleElementReferenceException])
    patient.until(lambda d: click(d, "#apps tr[data-app='ui-hellobye']"))
    wait_for(browser, "#app .graph .node")
    columns = patient.until(
        lambda d: [c.text for c in d.find_elements(By.CSS_SELECTOR, "#app .column")]
    )
    assert columns[0].startswith("Start") and "World" in columns[-1], columns
    shot(browser, "app")
    patient.until(lambda d: click(d, f"#app tr[data-session='{session.id}']"))
    wait_for(browser, f"#session[data-session='{session.id}'] .node")
    nodes = patient.until(
        lambda d: {
            n.get_attribute("data-instance"): n.get_attribute("class")
            for n in d.find_elements(By.CSS_SELECTOR, "#session .node")
        }
    )
    assert set(nodes) == {"Start", "Hello-unumIndex-0", "World-unumIndex-0"}, nodes
    assert all("status-DONE" in c for c in nodes.values())
    shot(browser, "session")
    assert console_errors(browser) == []


def twice(x: int) -> int:
    return 2 * x


def coordinator(n: int) -> list[int]:
    fexec = FunctionExecutor()
    fexec.map(twice, range(n))
    return fexec.get_result()  # type: ignore[no-any-return]


def test_the_dashboard_shows_an_executions_history(
    cluster: LocalCluster, browser: WebDriver
) -> None:
    with TriggerflowExecutor(cluster.url, cluster.api_key) as tf:
        execution = tf.run(coordinator, 3, name="ui-coordinator")
        assert execution.result(timeout=90) == [0, 2, 4]
    browser.get(f"{cluster.url}/ui#executions")
    if browser.find_elements(By.CSS_SELECTOR, "#key-form:not([hidden])"):  # a fresh page
        give_key(browser, cluster.api_key or "")
    row = f"#executions tr[data-execution='{execution.id}']"
    wait_for(browser, row)
    patient = WebDriverWait(browser, 20, ignored_exceptions=[StaleElementReferenceException])
    patient.until(lambda d: click(d, row))
    wait_for(browser, f"#execution[data-execution='{execution.id}'] tr[data-step]")
    steps = patient.until(
        lambda d: [r.text for r in d.find_elements(By.CSS_SELECTOR, "#execution tr[data-step]")]
    )
    assert len(steps) == 1 and "map" in steps[0] and "DONE" in steps[0], steps
    runs = browser.find_elements(By.CSS_SELECTOR, "#execution tr[data-run]")
    assert len(runs) >= 2  # it waited once, then ran again with its history
    shot(browser, "execution")
    assert console_errors(browser) == []


def test_the_dashboard_shows_the_keepers_tree(cluster: LocalCluster, browser: WebDriver) -> None:
    """A znode made through kazoo: in its parent's children, then its data and stat."""
    from .keeper import kazoo_client

    with kazoo_client(cluster.keeper_hosts) as zk:
        zk.create("/ui-tree/config", b"<b>shown as text</b>", makepath=True)
        zk.create("/ui-tree/owned", b"", ephemeral=True)
        owner = hex(zk.client_id[0])
        browser.get(f"{cluster.url}/ui#keeper")
        if browser.find_elements(By.CSS_SELECTOR, "#key-form:not([hidden])"):  # a fresh page
            give_key(browser, cluster.api_key or "")
        wait_for(browser, "#keeper tr[data-znode='/ui-tree']")
        patient = WebDriverWait(browser, 20, ignored_exceptions=[StaleElementReferenceException])
        patient.until(lambda d: click(d, "#keeper tr[data-znode='/ui-tree']"))
        wait_for(browser, "#keeper[data-path='/ui-tree'] tr[data-znode='/ui-tree/owned']")
        shot(browser, "keeper-tree")
        patient.until(lambda d: click(d, "#keeper tr[data-znode='/ui-tree/owned']"))
        wait_for(browser, "#keeper[data-path='/ui-tree/owned']")
        assert patient.until(lambda d: text_with(d, "stat", owner))  # its session
        browser.get(f"{cluster.url}/ui#keeper/%2Fui-tree%2Fconfig")
        data = patient.until(lambda d: text_with(d, "znode-data", "shown as text"))
        assert data == "<b>shown as text</b>"  # as text, not as markup
        assert browser.find_elements(By.CSS_SELECTOR, "#znode-data b") == []
        shot(browser, "keeper")
    assert console_errors(browser) == []
