// The bundle the RudderStack test page loads: @rudderstack/analytics-js from npm, its
// "bundled" build, which carries its plugins (BeaconQueue among them) in the bundle instead of
// loading them from RudderStack's CDN at run time.
import { RudderAnalytics } from '@rudderstack/analytics-js/bundled'

window.RudderAnalytics = RudderAnalytics
