// Stand-in for the host's script.js (A1111 1.10 and Forge dfdcbab685e5 ship the same one), written from reading it:
// gradioApp(), the callback lists extension scripts register with (onUiLoaded, onUiUpdate, onAfterUiUpdate), and
// one MutationObserver on the page that runs the "loaded" callbacks once, when #txt2img_prompt first exists, the
// "update" callbacks at every mutation, and the "after update" ones 200 ms after the last mutation.
var uiLoadedCallbacks = [];
var uiUpdateCallbacks = [];
var uiAfterUpdateCallbacks = [];

function gradioApp() {
    var apps = document.getElementsByTagName("gradio-app");
    var app = apps.length ? apps[0] : document;
    if (app !== document) {
        app.getElementById = function (id) {
            return document.getElementById(id);
        };
    }
    return app.shadowRoot || app;
}

function onUiLoaded(callback) {
    uiLoadedCallbacks.push(callback);
}

function onUiUpdate(callback) {
    uiUpdateCallbacks.push(callback);
}

function onAfterUiUpdate(callback) {
    uiAfterUpdateCallbacks.push(callback);
}

function executeCallbacks(queue, argument) {
    queue.forEach(function (callback) {
        try {
            callback(argument);
        } catch (error) {
            console.error("error running callback", callback, ":", error);
        }
    });
}

(function () {
    var loaded = false;
    var afterUpdateTimer = null;
    document.addEventListener("DOMContentLoaded", function () {
        new MutationObserver(function (mutations) {
            if (!loaded && gradioApp().querySelector("#txt2img_prompt")) {
                loaded = true;
                executeCallbacks(uiLoadedCallbacks);
            }
            executeCallbacks(uiUpdateCallbacks, mutations);
            clearTimeout(afterUpdateTimer);
            afterUpdateTimer = setTimeout(function () {
                executeCallbacks(uiAfterUpdateCallbacks);
            }, 200);
        }).observe(gradioApp(), {childList: true, subtree: true});
    });
})();
